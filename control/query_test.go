package control

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/volback/volback/control/inventory"
)

func TestParseCondition(t *testing.T) {
	cases := []struct {
		in   string
		want inventory.Condition
	}{
		{"name=backup-1", cond("name", "=", []string{"backup-1"})},
		{"name=a=b", cond("name", "=", []string{"a=b"})},
		{"size>=1024", cond("size", ">=", []string{"1024"})},
		{"size<5", cond("size", "<", []string{"5"})},
		{"state!=Disabled", cond("state", "!=", []string{"Disabled"})},
		{"uuid?=a,b,c", cond("uuid", "?=", []string{"a", "b", "c"})},
		{"uuid!?=a", cond("uuid", "!?=", []string{"a"})},
		{"name~=%back%", cond("name", "~=", []string{"%back%"})},
		{"name!~=x%", cond("name", "!~=", []string{"x%"})},
		{"description is null", cond("description", "is null", nil)},
		{"description not null", cond("description", "not null", nil)},
		{"backupStorageRefs.backupStorageUuid=abc", cond("backupStorageRefs.backupStorageUuid", "=", []string{"abc"})},
		{"name=", cond("name", "=", []string{""})},
	}
	for _, c := range cases {
		got, err := ParseCondition(c.in)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("ParseCondition(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "=x", "name", "na me=x", "1name=x", "uuid?=", "uuid?=,,", "x!y", "name;drop table=1", " is null"} {
		if _, err := ParseCondition(bad); err == nil {
			t.Errorf("ParseCondition(%q) accepted", bad)
		}
	}
}

func TestParseQuery(t *testing.T) {
	v := url.Values{"q": {"name~=%b%", "size>=10", "uuid?=x,y", "description is null"}, "sort": {"-size"}, "limit": {"5"}, "start": {"2"}, "replyWithCount": {"true"}}
	q, err := ParseQuery(v)
	if err != nil {
		t.Fatal(err)
	}
	want := []inventory.Condition{
		{Field: "name", Op: inventory.OpLike, Values: []string{"%b%"}},
		{Field: "size", Op: inventory.OpGe, Values: []string{"10"}},
		{Field: "uuid", Op: inventory.OpIn, Values: []string{"x", "y"}},
		{Field: "description", Op: inventory.OpIsNull},
	}
	if fmt.Sprint(q.Conditions) != fmt.Sprint(want) || q.SortField != "size" || !q.SortDesc || q.Limit != 5 || q.Start != 2 || !q.ReplyWithCount {
		t.Errorf("got %+v, want conditions %v sorted by -size, limit 5, start 2, replyWithCount", q, want)
	}
	q, _ = ParseQuery(url.Values{})
	if q.Limit != inventory.DefaultQueryLimit {
		t.Errorf("default limit %d", q.Limit)
	}
	for _, bad := range []url.Values{
		{"sort": {"size"}}, {"limit": {"-1"}}, {"start": {"x"}}, {"count": {"maybe"}}, {"fields": {"a b"}}, {"q": {"=x"}},
	} {
		_, err := ParseQuery(bad)
		var qe *QueryError
		if !errors.As(err, &qe) {
			t.Errorf("%v: got %v, want a QueryError", bad, err)
		}
	}
}

// FuzzParseCondition checks that an accepted condition is exactly what
// the text says: its field, operator and values put back together give
// the text again (an in-list less its empty elements).
func FuzzParseCondition(f *testing.F) {
	for _, s := range []string{"name=x", "uuid?=a,b", "d is null", "size>=1", "x!~=%", "a!?=,b,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCondition(s)
		if err != nil {
			return
		}
		if !fieldPattern.MatchString(c.Field) {
			t.Fatalf("accepted field %q", c.Field)
		}
		var again string
		switch c.Op {
		case inventory.OpIsNull, inventory.OpNotNull:
			if len(c.Values) != 0 {
				t.Fatalf("%q: values %q with %s", s, c.Values, c.Op)
			}
			again = c.Field + " " + string(c.Op)
			s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSuffix(s, " is null"), " not null")) + " " + string(c.Op)
		case inventory.OpIn, inventory.OpNotIn:
			if len(c.Values) == 0 {
				t.Fatalf("%q: empty in-list accepted", s)
			}
			again = c.Field + string(c.Op) + strings.Join(c.Values, ",")
			var kept []string
			for _, x := range strings.Split(strings.TrimPrefix(s, c.Field+string(c.Op)), ",") {
				if x != "" {
					kept = append(kept, x)
				}
			}
			s = c.Field + string(c.Op) + strings.Join(kept, ",")
		default:
			if len(c.Values) != 1 {
				t.Fatalf("%q: %d values for %s", s, len(c.Values), c.Op)
			}
			again = c.Field + string(c.Op) + c.Values[0]
		}
		if again != s {
			t.Fatalf("%q parsed as %+v, which reads %q", s, c, again)
		}
	})
}

func cond(field, op string, values []string) inventory.Condition {
	return inventory.Condition{Field: field, Op: inventory.Op(op), Values: values}
}
