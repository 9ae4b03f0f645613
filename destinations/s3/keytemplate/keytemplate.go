// Package keytemplate checks and expands the object key templates of the s3 destination
// ("{stream_name}/{date}/{connection_run_id}-{part}.{extension}").
package keytemplate

// Validate checks a key template when the config loads: known macros only, no space or
// any of !@#$%^&*, an element unique to the run and {part}, and at most 500 characters
// once expanded. The error names the problem.
func Validate(tmpl string) error {
	return nil // TODO(s3 destination): implement
}
