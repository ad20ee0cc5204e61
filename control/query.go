package control

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/volback/volback/control/inventory"
)

// ZStack's query API: GET /zstack/v1/<resources>?q=...&q=... with
// conditions ANDed, plus limit, start, count, replyWithCount, sort and
// fields. It is parsed here into an inventory.Query; package inventory
// alone turns that into SQL.

// zstackOps are the operators in the order ZStack's REST server looks for
// them: the first one the condition contains wins, and the condition is
// split at its first occurrence. ("=" is found inside "!=", so "!=" comes
// first; "name=a>=b" is read as the field "name=a", as ZStack reads it.)
var zstackOps = []string{"!=", ">=", "<=", "!?=", "!~=", "~=", "?=", "=", ">", "<", "is null", "not null"}

// QueryError reports a query the inventory cannot answer.
type QueryError = inventory.QueryError

// ParseCondition parses one q= value as ZStack's REST server does. A
// condition it cannot read is a bad request (400, ZStack's text); a field
// the resource has not is for the inventory to refuse.
func ParseCondition(s string) (inventory.Condition, error) {
	for _, op := range zstackOps {
		i := strings.Index(s, op)
		if i < 0 {
			continue
		}
		name, value := strings.TrimSpace(s[:i]), s[i+len(op):]
		c := inventory.Condition{Field: name, Op: inventory.Op(op)}
		switch c.Op {
		case inventory.OpIsNull, inventory.OpNotNull:
			return c, nil
		}
		if name == "" || value == "" {
			return inventory.Condition{}, badRequestf("Invalid query parameter. The '%s' in parameter[q] is not a key-value pair split by %s", s, op)
		}
		// The value is not trimmed: a space is valid in some conditions.
		if c.Op == inventory.OpIn || c.Op == inventory.OpNotIn {
			for _, x := range strings.Split(value, ",") {
				if x != "" {
					c.Values = append(c.Values, x)
				}
			}
		} else {
			c.Values = []string{value}
		}
		return c, nil
	}
	return inventory.Condition{}, badRequestf("Invalid query parameter. The '%s' in the parameter[q] doesn't contain any query operator. Valid query operators are [[%s]]", s, strings.Join(zstackOps, ", "))
}

// queryValues splits a raw query string as a servlet container does: on
// '&' only (a ';' belongs to the value), each name and value
// percent-decoded with '+' as a space.
func queryValues(raw string) (map[string][]string, error) {
	v := map[string][]string{}
	for _, pair := range strings.Split(raw, "&") {
		if pair == "" {
			continue
		}
		k, val, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			return nil, badRequestf("Invalid query parameter %q: %v", k, err)
		}
		value, err := url.QueryUnescape(val)
		if err != nil {
			return nil, badRequestf("Invalid query parameter %q: %v", pair, err)
		}
		v[name] = append(v[name], value)
	}
	return v, nil
}

// firstValue is a parameter's first value, trimmed; "" if absent.
func firstValue(v map[string][]string, name string) string {
	if vals := v[name]; len(vals) > 0 {
		return strings.TrimSpace(vals[0])
	}
	return ""
}

// ParseQuery parses the query string of a ZStack query request (the raw,
// still-encoded query) as ZStack's REST server does: limit and start must
// be integers (400 otherwise), count and replyWithCount are true only when
// they say "true", sort is +FIELD, -FIELD or FIELD (ascending), fields a
// comma-separated list; other parameters are ignored.
func ParseQuery(raw string) (*inventory.Query, error) {
	v, err := queryValues(raw)
	if err != nil {
		return nil, err
	}
	q := &inventory.Query{Limit: inventory.DefaultQueryLimit}
	first := func(name string) (string, bool) {
		if vals := v[name]; len(vals) > 0 {
			return strings.TrimSpace(vals[0]), true
		}
		return "", false
	}
	for _, name := range []string{"limit", "start"} {
		if s, ok := first(name); ok {
			n, err := strconv.Atoi(s)
			if err != nil {
				return nil, badRequestf("Invalid query parameter. '%s' must be an integer", name)
			}
			if name == "limit" {
				q.Limit = n
			} else {
				q.Start = n
			}
		}
	}
	if q.Limit < 0 {
		q.Limit = inventory.DefaultQueryLimit
	}
	q.Start = max(q.Start, 0)
	if s, ok := first("count"); ok {
		q.Count = strings.EqualFold(s, "true")
	}
	if s, ok := first("replyWithCount"); ok {
		q.ReplyWithCount = strings.EqualFold(s, "true")
	}
	if s, ok := first("sort"); ok && s != "" {
		switch s[0] {
		case '+':
			q.SortField = strings.TrimLeft(s, "+")
		case '-':
			q.SortField, q.SortDesc = strings.TrimLeft(s, "-"), true
		default:
			q.SortField = s
		}
	}
	if s, ok := first("fields"); ok {
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				q.Fields = append(q.Fields, f)
			}
		}
	}
	for _, s := range v["q"] {
		c, err := ParseCondition(s)
		if err != nil {
			return nil, err
		}
		q.Conditions = append(q.Conditions, c)
	}
	return q, nil
}
