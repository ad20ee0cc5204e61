package control

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// A Query is ZStack's query API: GET /zstack/v1/<resources>?q=...&q=...
// with conditions ANDed, plus limit, start, count, replyWithCount, sort
// and fields. It is parsed here and turned into SQL against a Schema that
// whitelists the fields a resource can be queried by, so no client text
// ever reaches SQL except as a bound argument.
type Query struct {
	Conditions     []Condition
	Limit          int  // default 1000
	Start          int  // rows to skip
	Count          bool // reply with the count only
	ReplyWithCount bool // reply with rows and the total
	SortField      string
	SortDesc       bool
	Fields         []string // return only these fields
}

// Condition is one q= term.
type Condition struct {
	Field  string
	Op     string // = != > < >= <= ?= !?= ~= !~= "is null" "not null"
	Values []string
}

// DefaultQueryLimit is ZStack's default page size.
const DefaultQueryLimit = 1000

// operators in the order they must be tried: longer ones first, so "!?="
// is not read as "!" + "?=".
var queryOps = []string{"!?=", "!~=", ">=", "<=", "!=", "?=", "~=", "=", ">", "<"}

var fieldPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// QueryError reports a malformed query parameter.
type QueryError struct {
	Param  string
	Reason string
}

func (e *QueryError) Error() string { return fmt.Sprintf("query parameter %q: %s", e.Param, e.Reason) }

// ParseCondition parses one q= value.
func ParseCondition(s string) (Condition, error) {
	bad := func(reason string) (Condition, error) {
		return Condition{}, &QueryError{Param: "q=" + s, Reason: reason}
	}
	for _, suffix := range []string{" is null", " not null"} {
		if strings.HasSuffix(s, suffix) {
			f := strings.TrimSpace(strings.TrimSuffix(s, suffix))
			if !fieldPattern.MatchString(f) {
				return bad("invalid field name")
			}
			return Condition{Field: f, Op: strings.TrimSpace(suffix)}, nil
		}
	}
	i := strings.IndexAny(s, "!?~=<>")
	if i <= 0 {
		return bad("want FIELD OP VALUE with OP one of = != > < >= <= ?= !?= ~= !~=, or FIELD is null / not null")
	}
	field, rest := s[:i], s[i:]
	if !fieldPattern.MatchString(field) {
		return bad("invalid field name " + strconv.Quote(field))
	}
	for _, op := range queryOps {
		if strings.HasPrefix(rest, op) {
			v := rest[len(op):]
			c := Condition{Field: field, Op: op}
			if op == "?=" || op == "!?=" {
				for _, x := range strings.Split(v, ",") {
					if x != "" {
						c.Values = append(c.Values, x)
					}
				}
				if len(c.Values) == 0 {
					return bad("an in-list needs at least one value")
				}
			} else {
				c.Values = []string{v}
			}
			return c, nil
		}
	}
	return bad("unknown operator")
}

// ParseQuery parses the query parameters of a ZStack query request.
func ParseQuery(v url.Values) (*Query, error) {
	q := &Query{Limit: DefaultQueryLimit}
	for _, s := range v["q"] {
		c, err := ParseCondition(s)
		if err != nil {
			return nil, err
		}
		q.Conditions = append(q.Conditions, c)
	}
	intParam := func(name string, dst *int, min int) error {
		if s := v.Get(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < min {
				return &QueryError{Param: name + "=" + s, Reason: fmt.Sprintf("want an integer >= %d", min)}
			}
			*dst = n
		}
		return nil
	}
	if err := intParam("limit", &q.Limit, 0); err != nil {
		return nil, err
	}
	if err := intParam("start", &q.Start, 0); err != nil {
		return nil, err
	}
	boolParam := func(name string, dst *bool) error {
		if s := v.Get(name); s != "" {
			b, err := strconv.ParseBool(s)
			if err != nil {
				return &QueryError{Param: name + "=" + s, Reason: "want true or false"}
			}
			*dst = b
		}
		return nil
	}
	if err := boolParam("count", &q.Count); err != nil {
		return nil, err
	}
	if err := boolParam("replyWithCount", &q.ReplyWithCount); err != nil {
		return nil, err
	}
	if s := v.Get("sort"); s != "" {
		// "+name" arrives as " name" when the client did not escape '+'.
		switch s[0] {
		case '+', ' ':
			q.SortField = s[1:]
		case '-':
			q.SortField, q.SortDesc = s[1:], true
		default:
			return nil, &QueryError{Param: "sort=" + s, Reason: "want +FIELD or -FIELD"}
		}
		if !fieldPattern.MatchString(q.SortField) {
			return nil, &QueryError{Param: "sort=" + s, Reason: "invalid field name"}
		}
	}
	for _, f := range v["fields"] {
		for _, x := range strings.Split(f, ",") {
			if x = strings.TrimSpace(x); x != "" {
				if !fieldPattern.MatchString(x) {
					return nil, &QueryError{Param: "fields=" + f, Reason: "invalid field name " + strconv.Quote(x)}
				}
				q.Fields = append(q.Fields, x)
			}
		}
	}
	return q, nil
}

// FieldKind is how a queryable field compares.
type FieldKind int

// Field kinds.
const (
	KindString FieldKind = iota
	KindInt
)

// Schema maps a resource's queryable fields to SQL columns.
type Schema struct {
	Table  string
	Fields map[string]SchemaField
}

// SchemaField is one queryable field.
type SchemaField struct {
	Column string
	Kind   FieldKind
}

// SQL renders q's conditions and sort as a WHERE clause (starting with
// " WHERE", or empty) and an ORDER BY clause, with every value bound.
func (q *Query) SQL(s Schema) (where string, args []any, order string, err error) {
	var terms []string
	for _, c := range q.Conditions {
		f, ok := s.Fields[c.Field]
		if !ok {
			return "", nil, "", &QueryError{Param: "q=" + c.Field, Reason: "no such field on " + s.Table}
		}
		vals := make([]any, len(c.Values))
		for i, v := range c.Values {
			if f.Kind == KindInt && c.Op != "~=" && c.Op != "!~=" {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return "", nil, "", &QueryError{Param: "q=" + c.Field + c.Op + v, Reason: "want an integer"}
				}
				vals[i] = n
			} else {
				vals[i] = v
			}
		}
		col := f.Column
		switch c.Op {
		case "is null":
			terms = append(terms, col+" IS NULL")
		case "not null":
			terms = append(terms, col+" IS NOT NULL")
		case "?=", "!?=":
			ph := strings.TrimSuffix(strings.Repeat("?,", len(vals)), ",")
			not := ""
			if c.Op == "!?=" {
				not = "NOT "
			}
			terms = append(terms, fmt.Sprintf("%s %sIN (%s)", col, not, ph))
			args = append(args, vals...)
		case "~=":
			terms = append(terms, col+" LIKE ?")
			args = append(args, vals[0])
		case "!~=":
			terms = append(terms, col+" NOT LIKE ?")
			args = append(args, vals[0])
		default: // = != > < >= <=
			terms = append(terms, col+" "+c.Op+" ?")
			args = append(args, vals[0])
		}
	}
	if len(terms) > 0 {
		where = " WHERE " + strings.Join(terms, " AND ")
	}
	if q.SortField != "" {
		f, ok := s.Fields[q.SortField]
		if !ok {
			return "", nil, "", &QueryError{Param: "sort=" + q.SortField, Reason: "no such field on " + s.Table}
		}
		order = " ORDER BY " + f.Column
		if q.SortDesc {
			order += " DESC"
		}
	}
	return where, args, order, nil
}
