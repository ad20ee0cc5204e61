package inventory

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRender(t *testing.T) {
	s := schemas[VolumeBackups]
	q := &Query{Conditions: []Condition{
		{Field: "name", Op: OpLike, Values: []string{"%b%"}},
		{Field: "size", Op: OpGe, Values: []string{"10"}},
		{Field: "uuid", Op: OpIn, Values: []string{"x", "y"}},
		{Field: "description", Op: OpIsNull},
	}, SortField: "size", SortDesc: true}
	where, args, order, err := s.render(q)
	if err != nil {
		t.Fatal(err)
	}
	if want := " WHERE name LIKE ? AND size >= ? AND uuid IN (?,?) AND description IS NULL"; where != want {
		t.Errorf("where %q, want %q", where, want)
	}
	if fmt.Sprint(args) != "[%b% 10 x y]" || order != " ORDER BY size DESC" {
		t.Errorf("args %v order %q", args, order)
	}
	for _, bad := range []*Query{
		{Conditions: []Condition{{Field: "nosuch", Op: OpEq, Values: []string{"1"}}}},
		{Conditions: []Condition{{Field: "size", Op: OpEq, Values: []string{"abc"}}}},
		{Conditions: []Condition{{Field: "name", Op: "=>", Values: []string{"x"}}}},
		{Conditions: []Condition{{Field: "name", Op: OpIn}}},
		{Conditions: []Condition{{Field: "name", Op: OpEq, Values: []string{"a", "b"}}}},
		{SortField: "nosuch"},
	} {
		_, _, _, err := s.render(bad)
		var qe *QueryError
		if !errors.As(err, &qe) {
			t.Errorf("%+v: got %v, want a QueryError", bad, err)
		}
	}
}

// FuzzRender checks that no client text reaches the SQL: whatever the
// operator and values, the rendered text is made only of the schema's
// columns, SQL words and placeholders, with one bound argument a value.
func FuzzRender(f *testing.F) {
	f.Add("name", "=", "x", "y")
	f.Add("size", ">=", "10", "")
	f.Add("uuid", "?=", "a'; DROP TABLE volumes; --", "b")
	f.Add("description", "is null", "", "")
	f.Fuzz(func(t *testing.T, field, op, v1, v2 string) {
		s := schemas[VolumeBackups]
		vals := []string{v1}
		if v2 != "" {
			vals = append(vals, v2)
		}
		if Op(op) == OpIsNull || Op(op) == OpNotNull {
			vals = nil
		}
		where, args, _, err := s.render(&Query{Conditions: []Condition{{Field: field, Op: Op(op), Values: vals}}})
		if err != nil {
			return
		}
		allowed := map[string]bool{"WHERE": true, "IN": true, "NOT": true, "LIKE": true, "IS": true, "NULL": true, "?": true,
			"=": true, "!=": true, ">": true, "<": true, ">=": true, "<=": true,
			"SELECT": true, "value": true, "FROM": true, "json_each": true}
		for _, f := range s.fields {
			allowed[f.column] = true
		}
		for _, tok := range strings.FieldsFunc(where, func(r rune) bool { return r == ' ' || r == ',' || r == '(' || r == ')' }) {
			if !allowed[tok] {
				t.Fatalf("rendered %q holds %q, which is neither a column nor SQL", where, tok)
			}
		}
		if strings.Count(where, "?") != len(args) {
			t.Fatalf("%q binds %d arguments for %d placeholders", where, len(args), strings.Count(where, "?"))
		}
	})
}

// TestLongInList: an in-list longer than SQLite binds in one statement is
// answered, as a JSON array.
func TestLongInList(t *testing.T) {
	ctx := context.Background()
	d, _, _ := openTest(t)
	if err := d.AddBackupStorage(ctx, &BackupStorage{UUID: "bs1", Name: "s", Type: StorageImageStore, URL: "/x"}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 40000 {
		ids = append(ids, fmt.Sprintf("%032x", i))
	}
	ids = append(ids, "bs1")
	for _, op := range []Op{OpIn, OpNotIn} {
		got, total, err := d.Query(ctx, BackupStorages, &Query{Conditions: []Condition{{Field: "uuid", Op: op, Values: ids}}, Limit: 10})
		want := 1
		if op == OpNotIn {
			want = 0
		}
		if err != nil || total != want || len(got) != want {
			t.Errorf("%s with %d values: %v total %d err %v, want %d", op, len(ids), got, total, err, want)
		}
	}
	sizes := []string{"1", "5"}
	for range 1000 {
		sizes = append(sizes, "7")
	}
	if _, _, err := d.Query(ctx, BackupStorages, &Query{Conditions: []Condition{{Field: "createDate", Op: OpIn, Values: sizes}}, Limit: 1}); err != nil {
		t.Errorf("long integer in-list: %v", err)
	}
}
