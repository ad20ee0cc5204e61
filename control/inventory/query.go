package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// A Query is ZStack's query API in typed form: conditions ANDed, a page
// (Limit, Start), a sort field and the fields to return. Package control
// parses it from a request's parameters; this package alone turns it into
// SQL, against a schema that whitelists each resource's queryable fields,
// with every value a bound argument, so no client text reaches SQL.
type Query struct {
	Conditions     []Condition
	Limit          int  // DefaultQueryLimit when parsed from a request
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
	Op     Op
	Values []string
}

// Op is a ZStack query operator.
type Op string

// The operators of ZStack's query API.
const (
	OpEq      Op = "="
	OpNe      Op = "!="
	OpGt      Op = ">"
	OpLt      Op = "<"
	OpGe      Op = ">="
	OpLe      Op = "<="
	OpIn      Op = "?="
	OpNotIn   Op = "!?="
	OpLike    Op = "~="
	OpNotLike Op = "!~="
	OpIsNull  Op = "is null"
	OpNotNull Op = "not null"
)

// DefaultQueryLimit is ZStack's default page size.
const DefaultQueryLimit = 1000

// QueryError reports a query parameter that cannot be answered.
type QueryError struct {
	Param  string
	Reason string
}

func (e *QueryError) Error() string { return fmt.Sprintf("query parameter %q: %s", e.Param, e.Reason) }

// Resource names a queryable resource.
type Resource int

// The queryable resources.
const (
	BackupStorages Resource = iota
	Volumes
	VolumeBackups
	UserTags
)

type fieldKind int

const (
	kindString fieldKind = iota
	kindInt
)

type schemaField struct {
	column string
	kind   fieldKind
}

type schema struct {
	table  string
	fields map[string]schemaField
}

var schemas = map[Resource]schema{
	BackupStorages: {table: "backup_storages", fields: map[string]schemaField{
		"uuid": {column: "uuid"}, "name": {column: "name"}, "url": {column: "url"}, "type": {column: "type"},
		"hostname": {column: "hostname"}, "createDate": {column: "create_date", kind: kindInt},
	}},
	Volumes: {table: "volumes", fields: map[string]schemaField{
		"uuid": {column: "uuid"}, "name": {column: "name"}, "type": {column: "type"}, "state": {column: "state"},
		"status": {column: "status"}, "size": {column: "size", kind: kindInt}, "installPath": {column: "path"},
		"vmInstanceUuid": {column: "vm_instance_uuid"}, "createDate": {column: "create_date", kind: kindInt},
	}},
	VolumeBackups: {table: "volume_backups", fields: map[string]schemaField{
		"uuid": {column: "uuid"}, "volumeUuid": {column: "volume_uuid"}, "name": {column: "name"},
		"description": {column: "description"}, "type": {column: "type"}, "state": {column: "state"},
		"status": {column: "status"}, "size": {column: "size", kind: kindInt}, "mode": {column: "mode"},
		"groupUuid": {column: "group_uuid"}, "vmInstanceUuid": {column: "vm_instance_uuid"},
		"createDate": {column: "create_date", kind: kindInt}, "lastOpDate": {column: "last_op_date", kind: kindInt},
	}},
	UserTags: {table: "user_tags", fields: map[string]schemaField{
		"uuid": {column: "uuid"}, "resourceUuid": {column: "resource_uuid"}, "resourceType": {column: "resource_type"},
		"tag": {column: "tag"}, "createDate": {column: "create_date", kind: kindInt}, "lastOpDate": {column: "last_op_date", kind: kindInt},
	}},
}

// Query answers q over a resource: the uuids of the page, in order, and
// the total number of matches. A field the resource cannot be queried by
// is a *QueryError.
func (d *DB) Query(ctx context.Context, r Resource, q *Query) (uuids []string, total int, err error) {
	s, ok := schemas[r]
	if !ok {
		return nil, 0, fmt.Errorf("query: unknown resource %d", r)
	}
	where, args, order, err := s.render(q)
	if err != nil {
		return nil, 0, err
	}
	if err := d.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+s.table+where, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("query %s: %w", s.table, err)
	}
	if q.Count {
		return nil, total, nil
	}
	rows, err := d.db.QueryContext(ctx, `SELECT uuid FROM `+s.table+where+order+` LIMIT ? OFFSET ?`,
		append(append([]any{}, args...), q.Limit, q.Start)...)
	if err != nil {
		return nil, 0, fmt.Errorf("query %s: %w", s.table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, 0, err
		}
		uuids = append(uuids, id)
	}
	return uuids, total, rows.Err()
}

// render turns q's conditions and sort into a WHERE clause (starting with
// " WHERE", or empty) and an ORDER BY clause (create_date unless sorted),
// with every value bound.
func (s schema) render(q *Query) (where string, args []any, order string, err error) {
	var terms []string
	for _, c := range q.Conditions {
		f, ok := s.fields[c.Field]
		if !ok {
			return "", nil, "", &QueryError{Param: "q=" + c.Field, Reason: "no such field on " + s.table}
		}
		vals := make([]any, len(c.Values))
		for i, v := range c.Values {
			if f.kind == kindInt && c.Op != OpLike && c.Op != OpNotLike {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return "", nil, "", &QueryError{Param: "q=" + c.Field + string(c.Op) + v, Reason: "want an integer"}
				}
				vals[i] = n
			} else {
				vals[i] = v
			}
		}
		col := f.column
		switch c.Op {
		case OpIsNull:
			terms = append(terms, col+" IS NULL")
		case OpNotNull:
			terms = append(terms, col+" IS NOT NULL")
		case OpIn, OpNotIn:
			if len(vals) == 0 {
				return "", nil, "", &QueryError{Param: "q=" + c.Field + string(c.Op), Reason: "an in-list needs at least one value"}
			}
			not := ""
			if c.Op == OpNotIn {
				not = "NOT "
			}
			if len(vals) <= maxInlineList {
				terms = append(terms, fmt.Sprintf("%s %sIN (%s)", col, not, placeholders(len(vals))))
				args = append(args, vals...)
				break
			}
			// A list longer than a statement may bind goes as one JSON
			// array, whatever its length.
			list, err := json.Marshal(vals)
			if err != nil {
				return "", nil, "", err
			}
			terms = append(terms, fmt.Sprintf("%s %sIN (SELECT value FROM json_each(?))", col, not))
			args = append(args, string(list))
		case OpLike, OpNotLike, OpEq, OpNe, OpGt, OpLt, OpGe, OpLe:
			if len(vals) != 1 {
				return "", nil, "", &QueryError{Param: "q=" + c.Field + string(c.Op), Reason: "want exactly one value"}
			}
			op := string(c.Op)
			switch c.Op {
			case OpLike:
				op = "LIKE"
			case OpNotLike:
				op = "NOT LIKE"
			}
			terms = append(terms, col+" "+op+" ?")
			args = append(args, vals[0])
		default:
			return "", nil, "", &QueryError{Param: "q=" + c.Field, Reason: "unknown operator " + strconv.Quote(string(c.Op))}
		}
	}
	if len(terms) > 0 {
		where = " WHERE " + strings.Join(terms, " AND ")
	}
	order = " ORDER BY create_date"
	if q.SortField != "" {
		f, ok := s.fields[q.SortField]
		if !ok {
			return "", nil, "", &QueryError{Param: "sort=" + q.SortField, Reason: "no such field on " + s.table}
		}
		order = " ORDER BY " + f.column
		if q.SortDesc {
			order += " DESC"
		}
	}
	return where, args, order, nil
}

// maxInlineList is the longest in-list bound value by value; longer ones
// are bound as one JSON array (SQLite binds at most 32766 values a
// statement).
const maxInlineList = 500

// placeholders is "?,?,...,?" with n marks.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}
