package config

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/backflowhq/backflow/internal/cronspec"
	"github.com/backflowhq/backflow/internal/glob"
)

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9_-]+$`)
	roleARNRE = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$`)
)

// ValidName reports whether name is a valid sync or destination name: [a-z0-9_-]+, so
// that it is safe in file names, object keys and URLs. serve checks names with it too.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// s3Keys are the connection keys of sources and state that only an s3:// location uses.
var s3Keys = []string{"region", "endpoint", "path_style", "auth"}

// validator checks a decoded, defaulted and resolved Config. isSet tells whether a key
// path was written in the file.
type validator struct {
	p     *problems
	isSet func(string) bool
	kinds Kinds
	dir   string
	// claims are the local files destinations write (see OptionsCheck.Claim).
	claims map[string]string
}

func validate(c *Config, p *problems, isSet func(string) bool, kinds Kinds) {
	v := &validator{p: p, isSet: isSet, kinds: kinds, dir: c.Dir, claims: map[string]string{}}
	v.state(c)
	v.serve(c.Serve)
	v.notify("notify", c.Notify)
	if len(c.Syncs) == 0 {
		v.p.check("syncs", "at least one sync is required")
	}
	names := map[string]int{}
	for i := range c.Syncs {
		sp := indexPath("syncs", i)
		s := &c.Syncs[i]
		switch {
		case s.Name == "":
			v.p.check(sp+".name", "is required")
		case !nameRE.MatchString(s.Name):
			v.p.check(sp+".name", fmt.Sprintf("%q may only contain a-z, 0-9, _ and -", s.Name))
		default:
			if j, dup := names[s.Name]; dup {
				v.p.check(sp+".name", fmt.Sprintf("%q is already the name of syncs[%d]", s.Name, j))
			} else {
				names[s.Name] = i
			}
		}
		v.source(sp+".source", &s.Source)
		v.mapping(sp+".mapping", &s.Mapping)
		v.oneOf(sp+".mode", s.Mode, ModeIncremental, ModeFull, ModeDiff)
		v.schedule(sp+".schedule", s.Schedule)
		v.destinations(sp+".destinations", s.Destinations)
		v.notify(sp+".notify", s.Notify)
	}
}

// oneOf checks an enumerated value; it reports "is required" for an empty one.
func (v *validator) oneOf(p, val string, allowed ...string) bool {
	if slices.Contains(allowed, val) {
		return true
	}
	if val == "" {
		v.p.check(p, "is required: one of "+strings.Join(allowed, ", "))
	} else {
		v.p.check(p, fmt.Sprintf("%q is not one of %s", val, strings.Join(allowed, ", ")))
	}
	return false
}

func (v *validator) state(c *Config) {
	u := c.State.URL
	if c.State.LeaseTTL < 2*time.Second {
		v.p.check("state.lease_ttl", "must be at least 2s: a lease is renewed a few times within it")
	}
	switch {
	case IsS3URL(u):
		if _, _, ok := SplitS3URL(u); !ok {
			v.p.check("state.url", "must be s3://bucket/prefix: the bucket is missing")
		}
		v.s3Options("state", c.State.S3)
	case schemeRE.MatchString(u):
		v.p.check("state.url", "must be a local directory or s3://bucket/prefix")
	default:
		v.notUsed("state", s3Keys, "used only by s3:// state")
	}
}

func (v *validator) serve(s ServeConfig) {
	if s.MaxConcurrentRuns < 1 {
		v.p.check("serve.max_concurrent_runs", "must be at least 1")
	}
	if s.History < 1 {
		v.p.check("serve.history", "must be at least 1")
	}
	if s.ShutdownGrace <= 0 {
		v.p.check("serve.shutdown_grace", "must be a positive duration")
	}
	if s.PublicURL != "" {
		if u, err := url.Parse(s.PublicURL); err != nil || !isHTTPURL(s.PublicURL) || u.RawQuery != "" || u.Fragment != "" {
			v.p.check("serve.public_url", "must be an http:// or https:// URL without query or fragment, such as https://backflow.example.com")
		}
	}
	if v.isSet("serve.auth_token") {
		// The message never quotes the value: it is a secret.
		if err := CheckAuthToken(s.AuthToken); err != nil {
			v.p.check("serve.auth_token", err.Error())
		}
	}
}

// notify checks the notify entries listed at np.
func (v *validator) notify(np string, ns []Notify) {
	for i, n := range ns {
		ip := indexPath(np, i)
		typeOK := v.oneOf(ip+".type", n.Type, NotifySlack, NotifyWebhook)
		switch {
		case n.URL == "":
			v.p.check(ip+".url", "is required")
		case !isHTTPURL(n.URL):
			v.p.check(ip+".url", "must be an http:// or https:// URL")
		}
		if typeOK && n.Type != NotifyWebhook && (n.Secret != "" || v.isSet(ip+".secret")) {
			v.p.check(ip+".secret", "only used by type webhook (Slack incoming webhooks are not signed)")
		}
		if len(n.On) == 0 {
			v.p.check(ip+".on", "must name at least one event: "+strings.Join(NotifyEvents(), ", "))
		}
		seen := map[string]bool{}
		for j, ev := range n.On {
			ep := indexPath(ip+".on", j)
			if !v.oneOf(ep, ev, NotifyEvents()...) {
				continue
			}
			if seen[ev] {
				v.p.check(ep, fmt.Sprintf("%q is listed twice", ev))
			}
			seen[ev] = true
		}
	}
}

// MinAuthTokenLength is the shortest serve auth token accepted: a token is the only
// thing between the network and POST /syncs/{name}/run, so it must not be guessable.
const MinAuthTokenLength = 16

// CheckAuthToken says what is wrong with a serve auth token (from the config or from
// serve --auth-token-file), without quoting it.
func CheckAuthToken(tok string) error {
	switch {
	case tok == "":
		return errors.New("is empty")
	case strings.TrimSpace(tok) != tok || strings.ContainsAny(tok, " \t\r\n"):
		return errors.New("may not contain spaces or line breaks")
	case len(tok) < MinAuthTokenLength:
		return fmt.Errorf("must be at least %d characters (try: openssl rand -hex 32)", MinAuthTokenLength)
	}
	return nil
}

// notUsed reports every key of keys set under parent.
func (v *validator) notUsed(parent string, keys []string, msg string) {
	for _, k := range keys {
		if v.isSet(joinPath(parent, k)) {
			v.p.check(joinPath(parent, k), msg)
		}
	}
}

func (v *validator) source(sp string, s *Source) {
	switch {
	case s.URL == "":
		v.p.check(sp+".url", "is required: s3://bucket/prefix or a local directory")
	case IsS3URL(s.URL):
		if _, _, ok := SplitS3URL(s.URL); !ok {
			v.p.check(sp+".url", "must be s3://bucket/prefix: the bucket is missing")
		}
		v.s3Options(sp, s.S3)
	case schemeRE.MatchString(s.URL):
		v.p.check(sp+".url", "must be s3://bucket/prefix, a local directory or a file:// URL")
	default:
		info, err := os.Stat(s.URL)
		switch {
		case err != nil && os.IsNotExist(err):
			v.p.check(sp+".url", fmt.Sprintf("local directory %s does not exist", s.URL))
		case err != nil:
			v.p.check(sp+".url", fmt.Sprintf("local directory %s: %v", s.URL, unwrapPathError(err)))
		case !info.IsDir():
			v.p.check(sp+".url", fmt.Sprintf("%s is not a directory", s.URL))
		}
		v.notUsed(sp, s3Keys, "used only by an s3:// source")
	}
	// The reader compiles it the same way: what the config accepts, the reader uses.
	if _, err := glob.Compile(s.Include); err != nil {
		v.p.check(sp+".include", err.Error())
	}
	v.oneOf(sp+".partition", s.Partition, PartitionAll, PartitionLatest)
	if s.Limits.MaxRowGroupBytes <= 0 {
		v.p.check(sp+".limits.max_row_group_bytes", "must be greater than 0")
	}
	if s.Limits.MaxRecordBytes <= 0 {
		v.p.check(sp+".limits.max_record_bytes", "must be greater than 0")
	}
	v.discovery(sp+".discovery", s)
	v.oneOf(sp+".limits.first_row_nulls", s.Limits.FirstRowNulls, FirstRowNullsReject, FirstRowNullsWarn)
}

// discoveryKeys are the keys only discovery type sqs uses.
var discoveryKeys = []string{"queue_url", "endpoint", "reconcile"}

func (v *validator) discovery(dp string, s *Source) {
	d := s.Discovery
	if !v.oneOf(dp+".type", d.Type, DiscoveryList, DiscoverySQS) {
		return
	}
	if d.Type == DiscoveryList {
		v.notUsed(dp, discoveryKeys, "used only by discovery type sqs")
		return
	}
	if !IsS3URL(s.URL) {
		v.p.check(dp+".type", "sqs needs an s3:// source url: S3 event notifications exist only for S3 buckets")
	}
	switch {
	case d.QueueURL == "":
		v.p.check(dp+".queue_url", "is required for discovery type sqs, such as https://sqs.us-east-1.amazonaws.com/123456789012/exports")
	case !isHTTPURL(d.QueueURL):
		v.p.check(dp+".queue_url", "must be an http:// or https:// URL, such as https://sqs.us-east-1.amazonaws.com/123456789012/exports")
	}
	if d.Endpoint != "" && !isHTTPURL(d.Endpoint) {
		v.p.check(dp+".endpoint", "must be an http:// or https:// URL")
	}
	switch {
	case d.Reconcile < 0:
		v.p.check(dp+".reconcile", "must be a positive duration (leave it out for the default, 24h)")
	case d.Reconcile < MinReconcile:
		v.p.check(dp+".reconcile", fmt.Sprintf("%s is too short: at least %s (leave it out for the default, 24h)", d.Reconcile, MinReconcile))
	}
}

// unwrapPathError drops the path an *os.PathError repeats.
func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// s3Options checks the connection settings of an S3 location at parent.
func (v *validator) s3Options(parent string, o S3Options) {
	if o.Endpoint != "" && !isHTTPURL(o.Endpoint) {
		v.p.check(parent+".endpoint", "must be an http:// or https:// URL")
	}
	v.auth(parent+".auth", o.Auth)
}

func (v *validator) auth(ap string, a Auth) {
	keys := []string{"access_key_id", "secret_access_key", "session_token"}
	role := []string{"role_arn", "external_id", "session_name"}
	if !v.oneOf(ap+".mode", a.Mode, AuthDefault, AuthKeys, AuthRole) {
		return
	}
	switch a.Mode {
	case AuthDefault:
		v.notUsed(ap, append(keys, role...), "not used by auth mode default")
	case AuthKeys:
		if a.AccessKeyID == "" {
			v.p.check(ap+".access_key_id", "is required for auth mode keys")
		}
		if a.SecretAccessKey == "" {
			v.p.check(ap+".secret_access_key", "is required for auth mode keys")
		}
		v.notUsed(ap, role, "not used by auth mode keys")
	case AuthRole:
		switch {
		case a.RoleARN == "":
			v.p.check(ap+".role_arn", "is required for auth mode role")
		case !roleARNRE.MatchString(a.RoleARN):
			v.p.check(ap+".role_arn", "must look like arn:aws:iam::123456789012:role/NAME")
		}
		v.notUsed(ap, keys, "not used by auth mode role (it assumes the role with the default credentials)")
	}
}

func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func (v *validator) mapping(mp string, m *Mapping) {
	v.oneOf(mp+".type", m.Type, TypeIdentify, TypeTrack, TypeGroup)
	if m.UserID == "" && m.AnonymousID == "" && !v.p.isBad(mp+".user_id") && !v.p.isBad(mp+".anonymous_id") {
		v.p.check(mp, "needs user_id, anonymous_id or both")
	}
	if m.Type == TypeGroup {
		if m.GroupID == "" {
			v.p.check(mp+".group_id", "is required for type group")
		}
	} else if m.GroupID != "" || v.isSet(mp+".group_id") {
		v.p.check(mp+".group_id", "only used by type group")
	}
	if m.Type == TypeTrack {
		switch {
		case m.Event != "" && m.EventColumn != "":
			v.p.check(mp+".event_column", "set event or event_column, not both")
		case m.Event == "" && m.EventColumn == "" && !v.p.isBad(mp+".event") && !v.p.isBad(mp+".event_column"):
			v.p.check(mp, "type track needs event (a constant name) or event_column")
		}
	} else {
		for _, k := range []string{"event", "event_column"} {
			if v.isSet(joinPath(mp, k)) {
				v.p.check(joinPath(mp, k), "only used by type track")
			}
		}
	}

	// An identifier column read twice would make two identifiers always equal: a typo.
	ids := []struct{ key, col string }{{"user_id", m.UserID}, {"anonymous_id", m.AnonymousID}, {"group_id", m.GroupID}}
	for i, id := range ids {
		for _, prev := range ids[:i] {
			if id.col != "" && id.col == prev.col {
				v.p.check(joinPath(mp, id.key), fmt.Sprintf("column %q is already used by %s", id.col, prev.key))
				break
			}
		}
	}

	listed := map[string]bool{}
	for i, col := range m.Columns {
		cp := indexPath(mp+".columns", i)
		switch {
		case col == "":
			v.p.check(cp, "must not be empty")
		case listed[col]:
			v.p.check(cp, fmt.Sprintf("column %q is listed twice", col))
		}
		listed[col] = true
	}

	// Output keys: every one must be a valid dotted path, and none may equal another
	// or be the parent object of another (`address` and `address.city`).
	type output struct{ key, path string }
	var outs []output
	for _, col := range sortedKeys(m.Rename) {
		rp := joinPath(mp+".rename", col)
		if col == "" {
			v.p.check(mp+".rename", "a column name must not be empty")
			continue
		}
		if len(m.Columns) > 0 && !listed[col] {
			v.p.check(rp, fmt.Sprintf("renames column %q, which is not listed in columns", col))
		}
		if msg := checkKeyPath(m.Rename[col]); msg != "" {
			v.p.check(rp, msg)
			continue
		}
		outs = append(outs, output{m.Rename[col], rp})
	}
	for _, k := range sortedKeys(m.Constants) {
		if msg := checkKeyPath(k); msg != "" {
			v.p.check(joinPath(mp+".constants", k), "the key "+msg)
			continue
		}
		outs = append(outs, output{k, joinPath(mp+".constants", k)})
	}
	seen := map[string]bool{}
	for i, col := range m.Columns {
		if _, renamed := m.Rename[col]; !renamed && col != "" && !seen[col] && !strings.Contains(col, ".") {
			outs = append(outs, output{col, indexPath(mp+".columns", i)})
		}
		seen[col] = true
	}
	for j, o := range outs {
		for _, prev := range outs[:j] {
			if msg := collide(o.key, prev.key); msg != "" {
				v.p.check(o.path, fmt.Sprintf("%s %s", msg, prev.path))
				break
			}
		}
	}
}

// checkKeyPath returns a problem with a dotted output key, or "".
func checkKeyPath(k string) string {
	if k == "" {
		return "must not be empty"
	}
	if slices.Contains(strings.Split(k, "."), "") {
		return fmt.Sprintf("%q has an empty segment (dots separate nested keys: a.b)", k)
	}
	return ""
}

// collide describes how output key a clashes with b, or returns "".
func collide(a, b string) string {
	switch {
	case a == b:
		return fmt.Sprintf("output key %q is also written by", a)
	case strings.HasPrefix(b, a+"."):
		return fmt.Sprintf("output key %q would replace the object holding %q from", a, b)
	case strings.HasPrefix(a, b+"."):
		return fmt.Sprintf("output key %q would nest inside the value %q from", a, b)
	}
	return ""
}

func (v *validator) schedule(sp string, s Schedule) {
	if s.Every != 0 && s.Cron != "" {
		v.p.check(sp, "set every or cron, not both")
	}
	if (s.Every != 0 || v.isSet(sp+".every")) && s.Every < time.Second {
		v.p.check(sp+".every", "must be at least 1s")
	}
	if s.Cron != "" {
		// serve parses it the same way: what check accepts, serve runs.
		if _, err := cronspec.Parse(s.Cron); err != nil {
			v.p.check(sp+".cron", fmt.Sprintf("is not a valid 5-field cron expression: %v", err))
		}
	}
	if !s.Start.IsZero() && s.Every == 0 {
		v.p.check(sp+".start", "only used with every")
	}
}

func (v *validator) destinations(dp string, ds []Destination) {
	if len(ds) == 0 {
		v.p.check(dp, "at least one destination is required")
	}
	names := map[string]int{}
	for i := range ds {
		v.destination(indexPath(dp, i), &ds[i], names, i)
	}
}

func (v *validator) destination(dp string, d *Destination, names map[string]int, i int) {
	var types []string
	if v.kinds != nil {
		types = v.kinds.Types()
	}
	typeOK := v.oneOf(dp+".type", d.Type, types...)
	switch {
	case d.Name == "" && !typeOK:
		// the type is reported already; the name defaults to it
	case !nameRE.MatchString(d.Name):
		v.p.check(dp+".name", fmt.Sprintf("%q may only contain a-z, 0-9, _ and -", d.Name))
	default:
		if j, dup := names[d.Name]; dup {
			v.p.check(dp+".name", fmt.Sprintf("%q is already the name of destinations[%d]; give each destination of the same type its own name", d.Name, j))
		} else {
			names[d.Name] = i
		}
	}
	// max_in_flight and batch_size default by type: without a type they are unset.
	if d.MaxInFlight < 1 && (typeOK || v.isSet(dp+".max_in_flight")) {
		v.p.check(dp+".max_in_flight", "must be at least 1")
	}
	if !(d.RateLimit >= 0) || math.IsInf(d.RateLimit, 0) {
		v.p.check(dp+".rate_limit", "must be a number of requests per second, 0 or more (0: unlimited)")
	}
	if d.Retry.MaxAttempts < 1 {
		v.p.check(dp+".retry.max_attempts", "must be at least 1")
	}
	if d.Retry.MaxBackoff <= 0 {
		v.p.check(dp+".retry.max_backoff", "must be a positive duration")
	}
	if d.BatchSize < 1 && (typeOK || v.isSet(dp+".batch_size")) {
		v.p.check(dp+".batch_size", "must be at least 1")
	}
	if d.Timeout <= 0 {
		v.p.check(dp+".timeout", "must be a positive duration")
	}
	if !typeOK {
		return
	}
	if d.Options != nil {
		d.Options.Prepare(&OptionsCheck{v: v, path: dp, dir: v.dir, claims: v.claims})
	}
}

// isToken reports whether s is an HTTP token (RFC 9110), as header names must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
