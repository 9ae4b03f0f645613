package suggest

import "testing"

func TestClosest(t *testing.T) {
	names := []string{"email", "plan", "customer_id", "Email_Verified"}
	for name, want := range map[string]string{
		"emial":          "email", // a swap is one edit
		"EMAIL":          "email", // case only
		"customerid":     "customer_id",
		"email_verified": "Email_Verified",
		"zzzzzz":         "",
	} {
		if got := Closest(name, names); got != want {
			t.Errorf("Closest(%q) = %q, want %q", name, got, want)
		}
	}
}
