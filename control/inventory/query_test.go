package inventory

import (
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
			"=": true, "!=": true, ">": true, "<": true, ">=": true, "<=": true}
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
