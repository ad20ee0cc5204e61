package control

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/volback/volback/control/inventory"
)

// ZStack's query API: GET /zstack/v1/<resources>?q=...&q=... with
// conditions ANDed, plus limit, start, count, replyWithCount, sort and
// fields. It is parsed here into an inventory.Query; package inventory
// alone turns that into SQL.

// operators in the order they must be tried: longer ones first, so "!?="
// is not read as "!" + "?=".
var queryOps = []string{"!?=", "!~=", ">=", "<=", "!=", "?=", "~=", "=", ">", "<"}

var fieldPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// QueryError reports a malformed query parameter.
type QueryError = inventory.QueryError

// ParseCondition parses one q= value.
func ParseCondition(s string) (inventory.Condition, error) {
	bad := func(reason string) (inventory.Condition, error) {
		return inventory.Condition{}, &QueryError{Param: "q=" + s, Reason: reason}
	}
	for _, suffix := range []string{" is null", " not null"} {
		if strings.HasSuffix(s, suffix) {
			f := strings.TrimSpace(strings.TrimSuffix(s, suffix))
			if !fieldPattern.MatchString(f) {
				return bad("invalid field name")
			}
			return inventory.Condition{Field: f, Op: inventory.Op(strings.TrimSpace(suffix))}, nil
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
			c := inventory.Condition{Field: field, Op: inventory.Op(op)}
			if c.Op == inventory.OpIn || c.Op == inventory.OpNotIn {
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
func ParseQuery(v url.Values) (*inventory.Query, error) {
	q := &inventory.Query{Limit: inventory.DefaultQueryLimit}
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
