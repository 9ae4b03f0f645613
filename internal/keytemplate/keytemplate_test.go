package keytemplate

import (
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", 400)
	tests := []struct {
		name string
		tmpl string
		want string // substring of the error; "" means valid
	}{
		{"default", Default, ""},
		{"every macro", "{stream_name}/{stream_id}/{connection_id}/{year}/{month}/{day}/{hour}/{minute}/{second}/{date}/{iso_date}/{date_time}/{timestamp}/{iso_date_time}/{unix}/{connection_run_id}/{stream_run_id}/{part}.{extension}", ""},
		{"stream run id", "{stream_run_id}_{part}", ""},
		{"date_time unique", "{date_time}-{part}.{extension}", ""},
		{"timestamp unique", "{timestamp}-{part}", ""},
		{"iso_date_time unique", "{iso_date_time}-{part}", ""},
		{"second unique", "{date}/{hour}{minute}{second}-{part}", ""},
		{"unix unique", "{unix}-{part}", ""},
		{"dots dashes slashes", "a.b-c_d/e=f/{connection_run_id}-{part}.{extension}", ""},
		{"empty", "", "empty"},
		{"unknown macro", "{stream_name}/{colour}/{connection_run_id}-{part}", "unknown macro {colour}"},
		{"macro case matters", "{Part}/{connection_run_id}-{part}", "unknown macro {Part}"},
		{"empty macro", "{}/{connection_run_id}-{part}", "empty macro {}"},
		{"unclosed", "{connection_run_id}-{part", `"{" at byte 20 is not closed`},
		{"nested", "{connection_run_id}-{pa{part}}", `"{" at byte 20 is not closed`},
		{"unopened", "{connection_run_id}-part}", `"}" at byte 24 has no opening`},
		{"space", "my key/{connection_run_id}-{part}", "a space at byte 2"},
		{"bang", "key!/{connection_run_id}-{part}", `'!'`},
		{"at", "key@/{connection_run_id}-{part}", `'@'`},
		{"hash", "key#/{connection_run_id}-{part}", `'#'`},
		{"dollar", "key$/{connection_run_id}-{part}", `'$'`},
		{"percent", "key%/{connection_run_id}-{part}", `'%'`},
		{"caret", "key^/{connection_run_id}-{part}", `'^'`},
		{"ampersand", "key&/{connection_run_id}-{part}", `'&'`},
		{"star", "key*/{connection_run_id}-{part}", `'*'`},
		{"tab", "key\t/{connection_run_id}-{part}", "control character"},
		{"newline", "key\n{connection_run_id}-{part}", "control character"},
		{"bad utf8", "key\xff{connection_run_id}-{part}", "invalid UTF-8 at byte 3"},
		{"no unique element", "{stream_name}/{date}/{part}.{extension}", "no element unique to the run"},
		{"minute is not unique", "{date}/{hour}{minute}-{part}", "no element unique to the run"},
		{"no part", "{stream_name}/{connection_run_id}.{extension}", "no {part}"},
		{"neither", "{stream_name}.{extension}", "no element unique to the run"},
		{"too long literal", long + "/" + long + "/{connection_run_id}-{part}", "longer than the limit of 500"},
		{"too long once expanded", strings.Repeat("x", 420) + "/{stream_name}/{connection_run_id}-{part}", "longer than the limit of 500"},
		{"just fits", strings.Repeat("x", 500-64-1-10) + "/{connection_run_id}{part}", ""},
		{"one over", strings.Repeat("x", 500-64-1-10+1) + "/{connection_run_id}{part}", "up to 501 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.tmpl)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate(%q) = %v, want nil", tt.tmpl, err)
			case tt.want != "" && err == nil:
				t.Fatalf("Validate(%q) = nil, want an error containing %q", tt.tmpl, tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("Validate(%q) = %q, want it to contain %q", tt.tmpl, err, tt.want)
			}
		})
	}
}

func TestValidateNamesForbiddenCharacter(t *testing.T) {
	for _, c := range ForbiddenChars {
		err := Validate("k" + string(c) + "{connection_run_id}-{part}")
		if err == nil || !strings.Contains(err.Error(), "'"+string(c)+"'") {
			t.Errorf("character %q: error %v does not name it", c, err)
		}
	}
}

func fixedVars() Vars {
	return Vars{
		StreamName:   "users",
		StreamID:     "0123456789abcdef",
		ConnectionID: "fedcba9876543210",
		RunID:        "20250414T112345Z-7f3a",
		// A non-UTC zone: every time macro must be in UTC.
		Time:      time.Date(2025, 4, 14, 13, 23, 45, 999, time.FixedZone("CEST", 2*3600)),
		Part:      7,
		Extension: "csv.gz",
	}
}

func TestExpandEveryMacro(t *testing.T) {
	want := map[string]string{
		"extension":         "csv.gz",
		"date_time":         "2025_04_14_11_23_45",
		"timestamp":         "2025_04_14_11_23_45",
		"iso_date_time":     "2025-04-14T11:23:45Z",
		"date":              "2025_04_14",
		"iso_date":          "2025-04-14",
		"year":              "2025",
		"month":             "04",
		"day":               "14",
		"hour":              "11",
		"minute":            "23",
		"second":            "45",
		"unix":              "1744629825",
		"stream_name":       "users",
		"stream_id":         "0123456789abcdef",
		"connection_id":     "fedcba9876543210",
		"connection_run_id": "20250414T112345Z-7f3a",
		"stream_run_id":     "20250414T112345Z-7f3a",
		"part":              "7",
	}
	if len(want) != len(Macros()) {
		t.Fatalf("the test covers %d macros, the package has %d", len(want), len(Macros()))
	}
	for _, name := range Macros() {
		got, err := Expand("a/{"+name+"}/b", fixedVars())
		if err != nil {
			t.Fatalf("Expand {%s}: %v", name, err)
		}
		if w := "a/" + want[name] + "/b"; got != w {
			t.Errorf("Expand {%s} = %q, want %q", name, got, w)
		}
	}
	got, err := Expand(Default, fixedVars())
	if err != nil {
		t.Fatal(err)
	}
	if want := "users/2025_04_14/20250414T112345Z-7f3a-7.csv.gz"; got != want {
		t.Errorf("Expand(Default) = %q, want %q", got, want)
	}
}

func TestExpandPadding(t *testing.T) {
	v := fixedVars()
	v.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	got, err := Expand("{year}{month}{day}{hour}{minute}{second}", v)
	if err != nil {
		t.Fatal(err)
	}
	if got != "20260102030405" {
		t.Errorf("got %q", got)
	}
}

func TestExpandRefuses(t *testing.T) {
	tests := []struct {
		name string
		tmpl string
		vars func(*Vars)
		want string
	}{
		{"unknown macro", "{nope}-{part}", nil, "unknown macro {nope}"},
		{"run id with a space", "{connection_run_id}-{part}", func(v *Vars) { v.RunID = "a b" }, "{connection_run_id}: the value \"a b\" contains a space"},
		{"stream name with a star", "{stream_name}-{part}", func(v *Vars) { v.StreamName = "a*" }, "'*'"},
		{"brace in a value", "{stream_name}-{part}", func(v *Vars) { v.StreamName = "{part}" }, "contains a brace"},
		{"too long", "{stream_name}/{part}", func(v *Vars) { v.StreamName = strings.Repeat("s", 499) }, "longer than the limit of 500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := fixedVars()
			if tt.vars != nil {
				tt.vars(&v)
			}
			_, err := Expand(tt.tmpl, v)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Expand(%q) error = %v, want it to contain %q", tt.tmpl, err, tt.want)
			}
		})
	}
}

// FuzzTemplate checks that Validate and Expand never panic, that they agree, and that the
// expansion of a valid template never keeps a brace and respects MaxLength.
func FuzzTemplate(f *testing.F) {
	f.Add(Default)
	f.Add("{a}{b")
	f.Add("}{")
	f.Add("{part}{connection_run_id}{{}}")
	f.Add("x/{iso_date_time}/{unix}-{part}.{extension}")
	f.Add("\xff{part}")
	f.Fuzz(func(t *testing.T, tmpl string) {
		verr := Validate(tmpl)
		key, eerr := Expand(tmpl, fixedVars())
		if verr != nil {
			return
		}
		if eerr != nil {
			t.Fatalf("Validate(%q) passed but Expand failed: %v", tmpl, eerr)
		}
		if strings.ContainsAny(key, "{} "+ForbiddenChars) {
			t.Fatalf("Expand(%q) = %q keeps a brace or a forbidden character", tmpl, key)
		}
		if len(key) > MaxLength {
			t.Fatalf("Expand(%q) is %d long", tmpl, len(key))
		}
		if !strings.Contains(key, "7") {
			t.Fatalf("Expand(%q) = %q lost {part}", tmpl, key)
		}
	})
}
