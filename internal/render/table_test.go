package render

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func table(t *testing.T, header []string, rows [][]string, maxWidth int) string {
	t.Helper()
	var b strings.Builder
	if err := Table(&b, header, rows, maxWidth); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestTableAligns(t *testing.T) {
	got := table(t, []string{"COLUMN", "PARQUET", "JSON"}, [][]string{
		{"email", "BYTE_ARRAY (STRING)", "string"},
		{"age", "INT64", "number"},
		{"tags", "group (LIST)", "array"},
	}, 0)
	want := "" +
		"COLUMN  PARQUET              JSON\n" +
		"email   BYTE_ARRAY (STRING)  string\n" +
		"age     INT64                number\n" +
		"tags    group (LIST)         array\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestTableWideCharacters(t *testing.T) {
	got := table(t, []string{"name", "city"}, [][]string{
		{"東京", "x"},
		{"🎉ab", "y"},
		{"café", "z"}, // precomposed é
		{"cafe\u0301", "w"},
	}, 0)
	want := "" +
		"name  city\n" +
		"東京  x\n" +
		"🎉ab  y\n" +
		"café  z\n" +
		"cafe\u0301  w\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestTableCutsAndEscapes(t *testing.T) {
	got := table(t, []string{"id", "note"}, [][]string{
		{"1", "line one\nline two"},
		{"2", "tab\there"},
		{"3", "\x1b[31mred\x1b[0m"},
		{"4", "a very long value that goes on"},
		{"5", "日本語のテキスト"},
	}, 10)
	want := "" +
		"id  note\n" +
		"1   line one…\n" +
		"2   tab\\there\n" +
		"3   \\x1b[31mr…\n" +
		"4   a very lo…\n" +
		"5   日本語の…\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestTableRaggedRowsAndNoHeader(t *testing.T) {
	got := table(t, nil, [][]string{{"a"}, {"bb", "c", "d"}, {}, {"e", "", ""}}, 0)
	want := "a\nbb  c  d\n\ne\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := table(t, []string{"x"}, nil, 0); got != "x\n" {
		t.Fatalf("header only: %q", got)
	}
	if got := table(t, nil, nil, 0); got != "" {
		t.Fatalf("nothing: %q", got)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestTableWriteError(t *testing.T) {
	if err := Table(failingWriter{}, []string{"a"}, [][]string{{"b"}}, 0); err == nil || err.Error() != "disk full" {
		t.Fatalf("got %v", err)
	}
}

func TestCell(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"hello", 0, "hello"},
		{"hello", 5, "hello"},
		{"hello!", 5, "hell…"},
		{"hello", 1, "…"},
		{"ab\ncd", 4, "ab…"}, // an escape is cut whole, never as a lone backslash
		{"a\r\nb", 0, `a\r\nb`},
		{"bell\a", 0, `bell\x07`},
		{"del\x7f", 0, `del\x7f`},
		{"bad\xff\xfeutf8", 0, `bad\xff\xfeutf8`},
		{"c1\u0085", 0, `c1\u0085`},
		{"evil\u202egnp.exe", 0, `evil\u202egnp.exe`},
		{"", 3, ""},
		{"👍🏽👍🏽👍🏽", 5, "👍🏽👍🏽…"}, // a skin-tone emoji stays whole
		{"中文字", 4, "中…"},
		{"👨‍👩‍👧 family", 0, "👨‍👩‍👧 family"}, // zero-width joiners are kept
	} {
		if got := Cell(tc.in, tc.max); got != tc.want {
			t.Errorf("Cell(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}

// FuzzCell checks, for any string and width, that a cell is valid UTF-8, has no
// control characters and fits the width.
func FuzzCell(f *testing.F) {
	for _, s := range []string{"", "hello", "東京🎉", "a\nb\x1b[0m", "\xff\xfe", "e\u0301\u0301\u0301", "\u202e"} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, s string, maxWidth int) {
		maxWidth %= 200
		got := Cell(s, maxWidth)
		if !utf8.ValidString(got) {
			t.Fatalf("Cell(%q) = %q is not valid UTF-8", s, got)
		}
		for _, r := range got {
			if unicode.IsControl(r) || unsafeRune(r) {
				t.Fatalf("Cell(%q) = %q keeps %U", s, got, r)
			}
		}
		if maxWidth > 0 && Width(got) > maxWidth {
			t.Fatalf("Cell(%q, %d) = %q is %d columns wide", s, maxWidth, got, Width(got))
		}
		if maxWidth <= 0 && got != escape(s) {
			t.Fatalf("Cell(%q, %d) cut the value", s, maxWidth)
		}
	})
}
