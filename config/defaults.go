package config

import "time"

// Defaults that other packages may want to name.
const (
	DefaultStateURL          = ".backflow"
	DefaultInclude           = "*.parquet"
	DefaultMaxRowGroupBytes  = 512 << 20 // 536870912
	DefaultMaxRecordBytes    = 1 << 20   // 1048576
	DefaultRetryMaxAttempts  = 8
	DefaultRetryMaxBackoff   = 30 * time.Second
	DefaultTimeout           = 30 * time.Second
	DefaultMaxConcurrentRuns = 4
	DefaultHistory           = 20
	DefaultShutdownGrace     = 30 * time.Second
	DefaultLeaseTTL          = 60 * time.Second
	DefaultReconcile         = 24 * time.Hour
	// MinReconcile keeps a reconcile listing from costing as much as listing alone.
	MinReconcile = time.Minute
)

// SetDefaults fills every field left at its zero value with its default. Load already
// does this (and there a number explicitly set to 0 stays 0, so that validation refuses
// it); SetDefaults is for code that builds a Config by hand, such as tests. kinds gives
// the per-type defaults of max_in_flight and batch_size (nil: none); a destination's
// options are left to the code that sets them.
func (c *Config) SetDefaults(kinds Kinds) { applyDefaults(c, nil, kinds) }

// applyDefaults is the one place defaults live. isSet tells whether a key path was
// written in the file; numbers and durations written explicitly (even as 0) are kept
// for validation to judge, while empty strings always take their default. A nil
// isSet treats every zero value as unset.
func applyDefaults(c *Config, isSet func(path string) bool, kinds Kinds) {
	if isSet == nil {
		isSet = func(string) bool { return false }
	}
	str := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	num := func(path string, v *int, def int) {
		if *v == 0 && !isSet(path) {
			*v = def
		}
	}
	num64 := func(path string, v *int64, def int64) {
		if *v == 0 && !isSet(path) {
			*v = def
		}
	}
	dur := func(path string, v *time.Duration, def time.Duration) {
		if *v == 0 && !isSet(path) {
			*v = def
		}
	}

	str(&c.State.URL, DefaultStateURL)
	str(&c.State.S3.Auth.Mode, AuthDefault)
	dur("state.lease_ttl", &c.State.LeaseTTL, DefaultLeaseTTL)

	num("serve.max_concurrent_runs", &c.Serve.MaxConcurrentRuns, DefaultMaxConcurrentRuns)
	num("serve.history", &c.Serve.History, DefaultHistory)
	dur("serve.shutdown_grace", &c.Serve.ShutdownGrace, DefaultShutdownGrace)

	notify := func(np string, ns []Notify) {
		for j := range ns {
			if len(ns[j].On) == 0 && !isSet(indexPath(np, j)+".on") {
				ns[j].On = DefaultNotifyOn()
			}
		}
	}
	notify("notify", c.Notify)

	for i := range c.Syncs {
		s := &c.Syncs[i]
		sp := indexPath("syncs", i)
		notify(sp+".notify", s.Notify)
		str(&s.Source.Include, DefaultInclude)
		str(&s.Source.Partition, PartitionAll)
		str(&s.Source.S3.Auth.Mode, AuthDefault)
		str(&s.Source.Discovery.Type, DiscoveryList)
		// Unlike other durations, an explicit 0 takes the default too: a queue without
		// reconciliation would lose for good every event that was never delivered.
		if s.Source.Discovery.Type == DiscoverySQS && s.Source.Discovery.Reconcile == 0 {
			s.Source.Discovery.Reconcile = DefaultReconcile
		}
		num64(sp+".source.limits.max_row_group_bytes", &s.Source.Limits.MaxRowGroupBytes, DefaultMaxRowGroupBytes)
		num64(sp+".source.limits.max_record_bytes", &s.Source.Limits.MaxRecordBytes, DefaultMaxRecordBytes)
		str(&s.Source.Limits.FirstRowNulls, FirstRowNullsReject)
		str(&s.Mode, ModeIncremental)

		for j := range s.Destinations {
			d := &s.Destinations[j]
			dp := indexPath(sp+".destinations", j)
			str(&d.Name, d.Type)
			if kinds != nil {
				if k, ok := kinds.Kind(d.Type); ok {
					num(dp+".max_in_flight", &d.MaxInFlight, k.MaxInFlight)
					num(dp+".batch_size", &d.BatchSize, k.BatchSize)
				}
			}
			num(dp+".retry.max_attempts", &d.Retry.MaxAttempts, DefaultRetryMaxAttempts)
			dur(dp+".retry.max_backoff", &d.Retry.MaxBackoff, DefaultRetryMaxBackoff)
			dur(dp+".timeout", &d.Timeout, DefaultTimeout)
		}
	}
}
