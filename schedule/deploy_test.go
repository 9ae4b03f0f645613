package schedule

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The example manifests in deploy/ are part of what serve ships: they must parse and
// agree with how serve behaves (probes on /healthz, SIGTERM grace, one run at a time).

const deployDir = "../deploy"

type obj = map[string]any

// docs decodes every YAML document of a file.
func docs(t *testing.T, path string) []obj {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []obj
	for {
		var d obj
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			out = append(out, d)
		}
	}
	return out
}

// get walks a path of map keys and list indexes.
func get(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(obj)
			if !ok {
				t.Fatalf("at %v: %T is not a map", path, v)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("at %v: %T is not a list long enough", path, v)
			}
			v = l[k]
		}
	}
	return v
}

func byKind(t *testing.T, ds []obj, kind string) obj {
	t.Helper()
	for _, d := range ds {
		if d["kind"] == kind {
			return d
		}
	}
	t.Fatalf("no %s", kind)
	return nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// checkContainer checks that the embedded backflow.yaml parses, keeps its state in S3,
// and that every ${VAR} it uses is set in the container from a Secret.
func checkConfig(t *testing.T, cm obj, container any) obj {
	t.Helper()
	text, _ := get(t, cm, "data", "backflow.yaml").(string)
	var cfg obj
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil || cfg == nil {
		t.Fatalf("ConfigMap backflow.yaml: %v", err)
	}
	if u, _ := get(t, cfg, "state", "url").(string); !strings.HasPrefix(u, "s3://") {
		t.Errorf("state.url %q: a pod keeps nothing, state must be in S3", u)
	}
	env := map[string]bool{}
	envs, _ := get(t, container, "env").([]any)
	for _, e := range envs {
		if get(t, e, "valueFrom", "secretKeyRef", "name") == nil {
			t.Errorf("env %v does not come from a Secret", e)
		}
		env[get(t, e, "name").(string)] = true
	}
	for _, m := range envRef.FindAllStringSubmatch(text, -1) {
		if !env[m[1]] {
			t.Errorf("backflow.yaml uses ${%s}, which the container does not set", m[1])
		}
	}
	if len(get(t, cfg, "syncs").([]any)) == 0 {
		t.Error("no syncs")
	}
	return cfg
}

func TestDeployKubernetesDeployment(t *testing.T) {
	ds := docs(t, filepath.Join(deployDir, "kubernetes", "deployment.yaml"))
	for _, k := range []string{"ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"} {
		byKind(t, ds, k)
	}
	dep := byKind(t, ds, "Deployment")
	// Replicas share the s3:// state (checkConfig): each due run runs on one of them.
	replicas, _ := get(t, dep, "spec", "replicas").(int)
	if replicas < 2 {
		t.Errorf("replicas %v: want at least 2, so that losing a pod loses no schedule", replicas)
	}
	if s := get(t, dep, "spec", "strategy", "type"); s != "RollingUpdate" {
		t.Errorf("strategy %v: replicas sharing a state can be updated one at a time", s)
	}
	if u := get(t, dep, "spec", "strategy", "rollingUpdate", "maxUnavailable"); u != 0 {
		t.Errorf("rollingUpdate.maxUnavailable %v, want 0: a pod is replaced before another goes", u)
	}
	pod := get(t, dep, "spec", "template", "spec")
	c := get(t, pod, "containers", 0)
	args := get(t, c, "args").([]any)
	if args[0] != "serve" || !slices.Contains(args, "--listen") {
		t.Errorf("args %v: want serve --listen", args)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if p := get(t, c, probe, "httpGet", "path"); p != "/healthz" {
			t.Errorf("%s path %v", probe, p)
		}
	}
	cfg := checkConfig(t, byKind(t, ds, "ConfigMap"), c)
	if g := get(t, pod, "terminationGracePeriodSeconds").(int); g <= 60 {
		t.Errorf("terminationGracePeriodSeconds %d must exceed serve.shutdown_grace %v", g, get(t, cfg, "serve", "shutdown_grace"))
	}
	// The Deployment listens on every interface: it needs a token, from the Secret.
	tok, _ := get(t, cfg, "serve", "auth_token").(string)
	if m := envRef.FindStringSubmatch(tok); m == nil || m[0] != tok {
		t.Errorf("serve.auth_token %q: want ${VAR}, set from the Secret (listening on :8080 needs a token)", tok)
	}
	svc := byKind(t, ds, "Service")
	if p := get(t, svc, "metadata", "annotations", "prometheus.io/path"); p != "/metrics" {
		t.Errorf("Service scrape path %v", p)
	}
	if tp := get(t, svc, "spec", "ports", 0, "targetPort"); tp != get(t, c, "ports", 0, "name") {
		t.Errorf("Service targetPort %v is not the container's port", tp)
	}
	labels := get(t, dep, "spec", "template", "metadata", "labels").(obj)
	matches := func(what string, sel obj) {
		t.Helper()
		if len(sel) == 0 {
			t.Errorf("%s selects nothing", what)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s selector %s=%v does not match the pod", what, k, v)
			}
		}
	}
	matches("Service", get(t, svc, "spec", "selector").(obj))

	// The budget keeps at least one replica through drains, and lets one go.
	pdb := byKind(t, ds, "PodDisruptionBudget")
	if v := get(t, pdb, "apiVersion"); v != "policy/v1" {
		t.Errorf("PodDisruptionBudget apiVersion %v, want policy/v1", v)
	}
	matches("PodDisruptionBudget", get(t, pdb, "spec", "selector", "matchLabels").(obj))
	minAvail, _ := get(t, pdb, "spec", "minAvailable").(int)
	if minAvail < 1 || minAvail >= replicas {
		t.Errorf("PodDisruptionBudget minAvailable %v with %d replicas: want at least 1 and fewer than the replicas, or no drain can proceed", get(t, pdb, "spec", "minAvailable"), replicas)
	}
	for i, c := range get(t, pod, "topologySpreadConstraints").([]any) {
		matches(fmt.Sprintf("topologySpreadConstraints[%d]", i), get(t, c, "labelSelector", "matchLabels").(obj))
	}
	// The lease_ttl, when set, is one serve accepts.
	if ttl, ok := get(t, cfg, "state", "lease_ttl").(string); ok {
		if d, err := time.ParseDuration(ttl); err != nil || d < 2*time.Second {
			t.Errorf("state.lease_ttl %q: want a duration of at least 2s", ttl)
		}
	}
}

func TestDeployKubernetesCronJob(t *testing.T) {
	ds := docs(t, filepath.Join(deployDir, "kubernetes", "cronjob.yaml"))
	cj := byKind(t, ds, "CronJob")
	if p := get(t, cj, "spec", "concurrencyPolicy"); p != "Forbid" {
		t.Errorf("concurrencyPolicy %v, want Forbid", p)
	}
	if _, err := ParseCron(get(t, cj, "spec", "schedule").(string)); err != nil {
		t.Errorf("schedule: %v", err)
	}
	pod := get(t, cj, "spec", "jobTemplate", "spec", "template", "spec")
	if r := get(t, pod, "restartPolicy"); r != "Never" {
		t.Errorf("restartPolicy %v (podFailurePolicy needs Never)", r)
	}
	c := get(t, pod, "containers", 0)
	if args := get(t, c, "args").([]any); args[0] != "sync" {
		t.Errorf("args %v: want sync", args)
	}
	checkConfig(t, byKind(t, ds, "ConfigMap"), c)
}

func TestDeploySystemdUnit(t *testing.T) {
	f, err := os.Open(filepath.Join(deployDir, "systemd", "backflow.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{} // "Section.Key" -> values
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("backflow.service:%d: %q is not key=value in a section", n, line)
			}
			keys[section+"."+k] = append(keys[section+"."+k], v)
		}
	}
	one := func(k string) string {
		if len(keys[k]) != 1 {
			t.Errorf("%s: %v, want one value", k, keys[k])
			return ""
		}
		return keys[k][0]
	}
	if e := one("Service.ExecStart"); !strings.Contains(e, "backflow serve ") || !strings.Contains(e, "/etc/backflow/") {
		t.Errorf("ExecStart %q", e)
	}
	if one("Service.EnvironmentFile") == "" || one("Service.Restart") != "on-failure" || one("Service.KillSignal") != "SIGTERM" {
		t.Error("want EnvironmentFile, Restart=on-failure and KillSignal=SIGTERM")
	}
	for _, k := range []string{"NoNewPrivileges", "ProtectSystem", "PrivateTmp", "DynamicUser", "StateDirectory"} {
		one("Service." + k)
	}
	if one("Install.WantedBy") != "multi-user.target" {
		t.Error("WantedBy")
	}
}

// TestDeployPrometheusScrape checks that every scrape job of the example sends the
// token, from a file, to /metrics.
func TestDeployPrometheusScrape(t *testing.T) {
	ds := docs(t, filepath.Join(deployDir, "prometheus", "scrape.yaml"))
	if len(ds) != 1 {
		t.Fatalf("%d documents, want 1", len(ds))
	}
	jobs, _ := get(t, ds[0], "scrape_configs").([]any)
	if len(jobs) == 0 {
		t.Fatal("no scrape_configs")
	}
	for i, j := range jobs {
		if p := get(t, j, "metrics_path"); p != "/metrics" {
			t.Errorf("job %d: metrics_path %v", i, p)
		}
		if typ := get(t, j, "authorization", "type"); typ != "Bearer" {
			t.Errorf("job %d: authorization.type %v, want Bearer", i, typ)
		}
		if f, _ := get(t, j, "authorization", "credentials_file").(string); !strings.HasPrefix(f, "/") {
			t.Errorf("job %d: credentials_file %q: the token must come from a file", i, f)
		}
		if get(t, j, "authorization", "credentials") != nil {
			t.Errorf("job %d: a token written in the scrape config", i)
		}
	}
}
