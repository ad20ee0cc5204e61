package control

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func TestParseCondition(t *testing.T) {
	cases := []struct {
		in   string
		want Condition
	}{
		{"name=backup-1", Condition{"name", "=", []string{"backup-1"}}},
		{"name=a=b", Condition{"name", "=", []string{"a=b"}}},
		{"size>=1024", Condition{"size", ">=", []string{"1024"}}},
		{"size<5", Condition{"size", "<", []string{"5"}}},
		{"state!=Disabled", Condition{"state", "!=", []string{"Disabled"}}},
		{"uuid?=a,b,c", Condition{"uuid", "?=", []string{"a", "b", "c"}}},
		{"uuid!?=a", Condition{"uuid", "!?=", []string{"a"}}},
		{"name~=%back%", Condition{"name", "~=", []string{"%back%"}}},
		{"name!~=x%", Condition{"name", "!~=", []string{"x%"}}},
		{"description is null", Condition{"description", "is null", nil}},
		{"description not null", Condition{"description", "not null", nil}},
		{"backupStorageRefs.backupStorageUuid=abc", Condition{"backupStorageRefs.backupStorageUuid", "=", []string{"abc"}}},
		{"name=", Condition{"name", "=", []string{""}}},
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

var testSchema = Schema{Table: "volume_backups", Fields: map[string]SchemaField{
	"uuid": {Column: "uuid"}, "name": {Column: "name"}, "size": {Column: "size", Kind: KindInt},
	"description": {Column: "description"},
}}

func TestQuerySQL(t *testing.T) {
	v := url.Values{"q": {"name~=%b%", "size>=10", "uuid?=x,y", "description is null"}, "sort": {"-size"}, "limit": {"5"}, "start": {"2"}, "replyWithCount": {"true"}}
	q, err := ParseQuery(v)
	if err != nil {
		t.Fatal(err)
	}
	where, args, order, err := q.SQL(testSchema)
	if err != nil {
		t.Fatal(err)
	}
	if want := " WHERE name LIKE ? AND size >= ? AND uuid IN (?,?) AND description IS NULL"; where != want {
		t.Errorf("where %q, want %q", where, want)
	}
	if fmt.Sprint(args) != "[%b% 10 x y]" || order != " ORDER BY size DESC" || q.Limit != 5 || q.Start != 2 || !q.ReplyWithCount {
		t.Errorf("args %v order %q limit %d start %d rwc %v", args, order, q.Limit, q.Start, q.ReplyWithCount)
	}
	q, _ = ParseQuery(url.Values{})
	if q.Limit != DefaultQueryLimit {
		t.Errorf("default limit %d", q.Limit)
	}
	for _, bad := range []url.Values{
		{"q": {"nosuch=1"}}, {"q": {"size=abc"}}, {"sort": {"size"}}, {"sort": {"+nosuch"}},
		{"limit": {"-1"}}, {"start": {"x"}}, {"count": {"maybe"}}, {"fields": {"a b"}},
	} {
		q, err := ParseQuery(bad)
		if err == nil {
			_, _, _, err = q.SQL(testSchema)
		}
		var qe *QueryError
		if !errors.As(err, &qe) {
			t.Errorf("%v: got %v, want a QueryError", bad, err)
		}
	}
}

func FuzzParseCondition(f *testing.F) {
	for _, s := range []string{"name=x", "uuid?=a,b", "d is null", "size>=1", "x!~=%"} {
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
		q := &Query{Conditions: []Condition{c}}
		schema := Schema{Table: "t", Fields: map[string]SchemaField{c.Field: {Column: "col"}}}
		where, args, _, err := q.SQL(schema)
		if err != nil {
			return
		}
		// Client text never reaches the SQL: only the column, the
		// operator and placeholders do.
		var want string
		switch c.Op {
		case "is null":
			want = " WHERE col IS NULL"
		case "not null":
			want = " WHERE col IS NOT NULL"
		case "?=", "!?=":
			ph := strings.TrimSuffix(strings.Repeat("?,", len(c.Values)), ",")
			want = " WHERE col IN (" + ph + ")"
			if c.Op == "!?=" {
				want = " WHERE col NOT IN (" + ph + ")"
			}
		case "~=":
			want = " WHERE col LIKE ?"
		case "!~=":
			want = " WHERE col NOT LIKE ?"
		default:
			want = " WHERE col " + c.Op + " ?"
		}
		if where != want {
			t.Fatalf("SQL %q, want %q", where, want)
		}
		if c.Op != "is null" && c.Op != "not null" && len(args) != len(c.Values) {
			t.Fatalf("%d args for %d values", len(args), len(c.Values))
		}
	})
}
