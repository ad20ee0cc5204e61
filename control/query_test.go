package control

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/volback/volback/control/inventory"
)

func cond(field, op string, values []string) inventory.Condition {
	return inventory.Condition{Field: field, Op: inventory.Op(op), Values: values}
}

// TestParseCondition reads q= values as ZStack's REST server does: the
// first operator of its list the text contains, split at its first
// occurrence; what it cannot read is a 400 with ZStack's text.
func TestParseCondition(t *testing.T) {
	for _, c := range []struct {
		in   string
		want inventory.Condition
	}{
		{"name=backup-1", cond("name", "=", []string{"backup-1"})},
		{"name=a=b", cond("name", "=", []string{"a=b"})},
		{"name=x;y", cond("name", "=", []string{"x;y"})},
		{"name= spaced ", cond("name", "=", []string{" spaced "})},
		{"size>=1024", cond("size", ">=", []string{"1024"})},
		{"size<5", cond("size", "<", []string{"5"})},
		{"state!=Disabled", cond("state", "!=", []string{"Disabled"})},
		{"uuid?=a,b,c", cond("uuid", "?=", []string{"a", "b", "c"})},
		{"uuid!?=a", cond("uuid", "!?=", []string{"a"})},
		{"name~=%back%", cond("name", "~=", []string{"%back%"})},
		{"name!~=x%", cond("name", "!~=", []string{"x%"})},
		{"description is null", cond("description", "is null", nil)},
		{"description not null", cond("description", "not null", nil)},
		{"name=a>=b", cond("name=a", ">=", []string{"b"})}, // ZStack looks for >= before =
		{"backupStorageRefs.backupStorageUuid=abc", cond("backupStorageRefs.backupStorageUuid", "=", []string{"abc"})},
	} {
		got, err := ParseCondition(c.in)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("ParseCondition(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for in, want := range map[string]string{
		"x!y":     "Invalid query parameter. The 'x!y' in the parameter[q] doesn't contain any query operator. Valid query operators are [[!=, >=, <=, !?=, !~=, ~=, ?=, =, >, <, is null, not null]]",
		"name":    "Invalid query parameter. The 'name' in the parameter[q] doesn't contain any query operator. Valid query operators are [[!=, >=, <=, !?=, !~=, ~=, ?=, =, >, <, is null, not null]]",
		"name=":   "Invalid query parameter. The 'name=' in parameter[q] is not a key-value pair split by =",
		"=x":      "Invalid query parameter. The '=x' in parameter[q] is not a key-value pair split by =",
		"uuid?=":  "Invalid query parameter. The 'uuid?=' in parameter[q] is not a key-value pair split by ?=",
		"size>=":  "Invalid query parameter. The 'size>=' in parameter[q] is not a key-value pair split by >=",
		"":        "Invalid query parameter. The '' in the parameter[q] doesn't contain any query operator. Valid query operators are [[!=, >=, <=, !?=, !~=, ~=, ?=, =, >, <, is null, not null]]",
		"a ~ b":   "doesn't contain any query operator",
		"a is no": "doesn't contain any query operator",
	} {
		_, err := ParseCondition(in)
		var br badRequest
		if !errors.As(err, &br) || !strings.Contains(string(br), want) {
			t.Errorf("ParseCondition(%q) = %v, want a 400 saying %q", in, err, want)
		}
	}
}

func TestParseQuery(t *testing.T) {
	raw := "q=name~=%25b%25&q=size%3E=10&q=uuid?=x,y&q=description%20is%20null&q=name=a;b&sort=-size&limit=5&start=2&replyWithCount=TRUE&fields=uuid,%20name"
	q, err := ParseQuery(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := []inventory.Condition{
		cond("name", "~=", []string{"%b%"}),
		cond("size", ">=", []string{"10"}),
		cond("uuid", "?=", []string{"x", "y"}),
		cond("description", "is null", nil),
		cond("name", "=", []string{"a;b"}),
	}
	if fmt.Sprint(q.Conditions) != fmt.Sprint(want) || q.SortField != "size" || !q.SortDesc || q.Limit != 5 || q.Start != 2 || !q.ReplyWithCount || fmt.Sprint(q.Fields) != "[uuid name]" {
		t.Errorf("got %+v, want conditions %v sorted by -size, limit 5, start 2, replyWithCount, fields uuid,name", q, want)
	}
	// A '+' arrives as a space (servlet decoding): still ascending.
	for _, s := range []string{"sort=%2Bname", "sort=+name", "sort=name"} {
		if q, err := ParseQuery(s); err != nil || q.SortField != "name" || q.SortDesc {
			t.Errorf("%s: %+v %v, want ascending by name", s, q, err)
		}
	}
	if q, _ := ParseQuery(""); q.Limit != inventory.DefaultQueryLimit || q.Count || q.ReplyWithCount {
		t.Errorf("defaults: %+v", q)
	}
	if q, _ := ParseQuery("count=maybe&replyWithCount=1"); q.Count || q.ReplyWithCount {
		t.Errorf("count=maybe and replyWithCount=1 are false in ZStack: %+v", q)
	}
	for raw, want := range map[string]string{
		"limit=abc": "Invalid query parameter. 'limit' must be an integer",
		"start=x":   "Invalid query parameter. 'start' must be an integer",
		"q=name":    "doesn't contain any query operator",
		"q=%zz":     "Invalid query parameter",
	} {
		_, err := ParseQuery(raw)
		var br badRequest
		if !errors.As(err, &br) || !strings.Contains(string(br), want) {
			t.Errorf("ParseQuery(%q) = %v, want a 400 saying %q", raw, err, want)
		}
	}
}

// FuzzParseCondition checks that an accepted condition is exactly what
// the text says: its field, operator and values put back together give
// the text again (the field trimmed, an in-list less its empty elements).
func FuzzParseCondition(f *testing.F) {
	for _, s := range []string{"name=x", "uuid?=a,b", "d is null", "size>=1", "x!~=%", "a!?=,b,", "n=x;y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCondition(s)
		if err != nil {
			var br badRequest
			if !errors.As(err, &br) {
				t.Fatalf("%q: error %v is not a bad request", s, err)
			}
			return
		}
		i := strings.Index(s, string(c.Op))
		if i < 0 || strings.TrimSpace(s[:i]) != c.Field {
			t.Fatalf("%q parsed as field %q with %s", s, c.Field, c.Op)
		}
		rest := s[i+len(c.Op):]
		switch c.Op {
		case inventory.OpIsNull, inventory.OpNotNull:
			if len(c.Values) != 0 {
				t.Fatalf("%q: values %q with %s", s, c.Values, c.Op)
			}
		case inventory.OpIn, inventory.OpNotIn:
			var kept []string
			for _, x := range strings.Split(rest, ",") {
				if x != "" {
					kept = append(kept, x)
				}
			}
			if strings.Join(kept, ",") != strings.Join(c.Values, ",") || len(kept) != len(c.Values) {
				t.Fatalf("%q: in-list %q, want %q", s, c.Values, kept)
			}
		default:
			if len(c.Values) != 1 || c.Values[0] != rest {
				t.Fatalf("%q: values %q, want [%q]", s, c.Values, rest)
			}
		}
		// No operator earlier in ZStack's order is in the text.
		for _, op := range zstackOps {
			if op == string(c.Op) {
				break
			}
			if strings.Contains(s, op) {
				t.Fatalf("%q holds %s, which ZStack looks for before %s", s, op, c.Op)
			}
		}
	})
}
