// Package deploy holds the deployment manifests (Kubernetes, systemd, Prometheus); its
// test decodes every Kubernetes manifest strictly into the Kubernetes API types, so a
// misspelled or misplaced field fails here rather than in a cluster.
package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// object is what each document of a manifest decodes into, by kind.
func object(kind string) (any, bool) {
	switch kind {
	case "Job":
		return &batchv1.Job{}, true
	case "CronJob":
		return &batchv1.CronJob{}, true
	case "Deployment":
		return &appsv1.Deployment{}, true
	case "ConfigMap":
		return &corev1.ConfigMap{}, true
	case "Secret":
		return &corev1.Secret{}, true
	case "Service":
		return &corev1.Service{}, true
	case "ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	}
	return nil, false
}

// decodeManifests strictly decodes every document of every Kubernetes manifest, by kind.
func decodeManifests(t *testing.T) map[string][]any {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in deploy/kubernetes (%v)", err)
	}
	out := map[string][]any{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(data), "\n---\n") {
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s document %d: %v", p, i, err)
			}
			if string(js) == "null" {
				continue // comments only
			}
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := json.Unmarshal(js, &meta); err != nil || meta.Kind == "" || meta.APIVersion == "" {
				t.Fatalf("%s document %d: no apiVersion or kind (%v)", p, i, err)
			}
			obj, ok := object(meta.Kind)
			if !ok {
				t.Fatalf("%s document %d: kind %s is not checked by this test: add it", p, i, meta.Kind)
			}
			dec := json.NewDecoder(bytes.NewReader(js))
			dec.DisallowUnknownFields()
			if err := dec.Decode(obj); err != nil {
				t.Errorf("%s document %d (%s): %v", p, i, meta.Kind, err)
				continue
			}
			out[filepath.Base(p)+"/"+meta.Kind] = append(out[filepath.Base(p)+"/"+meta.Kind], obj)
		}
	}
	return out
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	decodeManifests(t)
}

// The sharded sync: an Indexed Job (and a CronJob whose job template is one) whose pod I
// runs `backflow sync --shard I/N` with N its completions, retried per index, with s3://
// state (the shards share nothing else).
func TestShardedJobs(t *testing.T) {
	objs := decodeManifests(t)
	var specs []batchv1.JobSpec
	for _, o := range objs["indexed-job.yaml/Job"] {
		specs = append(specs, o.(*batchv1.Job).Spec)
	}
	for _, o := range objs["cronjob-sharded.yaml/CronJob"] {
		specs = append(specs, o.(*batchv1.CronJob).Spec.JobTemplate.Spec)
	}
	if len(specs) != 2 {
		t.Fatalf("want the Indexed Job and the sharded CronJob, found %d job specs", len(specs))
	}
	for _, s := range specs {
		if s.CompletionMode == nil || *s.CompletionMode != batchv1.IndexedCompletion {
			t.Errorf("completionMode is not Indexed")
		}
		if s.Completions == nil || s.Parallelism == nil || *s.Completions != *s.Parallelism {
			t.Errorf("completions and parallelism must be the shard count")
		}
		if s.BackoffLimitPerIndex == nil {
			t.Errorf("backoffLimitPerIndex is not set: one failing shard would restart the others")
		}
		if s.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
			t.Errorf("restartPolicy %q, want Never (backoffLimitPerIndex needs it)", s.Template.Spec.RestartPolicy)
		}
		c := s.Template.Spec.Containers[0]
		want := fmt.Sprintf("$(JOB_COMPLETION_INDEX)/%d", *s.Completions)
		if i := indexOf(c.Args, "--shard"); i < 0 || i+1 >= len(c.Args) || c.Args[i+1] != want {
			t.Errorf("args %q: want --shard %s", c.Args, want)
		}
		found := false
		for _, e := range c.Env {
			if e.Name == "JOB_COMPLETION_INDEX" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				found = true
			}
		}
		if !found {
			t.Errorf("JOB_COMPLETION_INDEX is not taken from the pod's completion index")
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("memory requests and limits must be set")
		}
	}
	for _, o := range objs["indexed-job.yaml/ConfigMap"] {
		cfg := o.(*corev1.ConfigMap).Data["backflow.yaml"]
		if !strings.Contains(cfg, "url: s3://") || !strings.Contains(cfg, "state:") {
			t.Errorf("the shards' config must keep its state in s3:// (shared by every pod):\n%s", cfg)
		}
	}
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}
