package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/volback/volback/control/inventory"
)

// query answers a ZStack query of a resource: {"inventories": [...]} (with
// "total" if asked), or {"total": N} for count=true. A path uuid
// (GET /resources/{uuid}) is one more condition. load turns the page's
// uuids into inventories, in order.
func (a *API) query(ctx context.Context, c *apiCall, res inventory.Resource, load func(context.Context, []string) ([]any, error)) (any, error) {
	q, err := ParseQuery(c.r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	if id := c.Path("uuid"); id != "" {
		q.Conditions = append(q.Conditions, inventory.Condition{Field: "uuid", Op: inventory.OpEq, Values: []string{id}})
	}
	ids, total, err := a.DB.Query(ctx, res, q)
	var qe *inventory.QueryError
	if errors.As(err, &qe) {
		return nil, errInvalid("invalid query: %v", qe)
	}
	if err != nil {
		return nil, err
	}
	if q.Count {
		return map[string]any{"total": total}, nil
	}
	invs, err := load(ctx, ids)
	if err != nil {
		return nil, err
	}
	if invs == nil {
		invs = []any{}
	}
	if len(q.Fields) > 0 {
		invs = selectFields(invs, q.Fields)
	}
	body := map[string]any{"inventories": invs, "schema": querySchema(res, invs)}
	if q.ReplyWithCount {
		body["total"] = total
	}
	return body, nil
}

// Java classes of ZStack's inventories, for the "schema" its query replies
// carry: the path of every object in the reply and its concrete class, so
// a client can tell a subclass (an ImageStore's backup storage) from its
// parent.
var inventoryClasses = map[inventory.Resource]string{
	inventory.BackupStorages: "org.zstack.storage.backup.imagestore.ImageStoreBackupStorageInventory",
	inventory.Volumes:        "org.zstack.header.volume.VolumeInventory",
	inventory.VolumeBackups:  "org.zstack.header.storage.backup.VolumeBackupInventory",
	inventory.UserTags:       "org.zstack.header.tag.UserTagInventory",
}

// querySchema builds the schema of a query reply as ZStack's
// JsonSchemaBuilder does: nested objects first, then each inventory.
func querySchema(res inventory.Resource, invs []any) map[string]string {
	schema := map[string]string{}
	for i, inv := range invs {
		path := fmt.Sprintf("inventories[%d]", i)
		if res == inventory.VolumeBackups {
			var b struct {
				Mode *string          `json:"mode"`
				Refs []map[string]any `json:"backupStorageRefs"`
			}
			raw, _ := json.Marshal(inv)
			_ = json.Unmarshal(raw, &b)
			for j := range b.Refs {
				schema[fmt.Sprintf("%s.backupStorageRefs[%d]", path, j)] = "org.zstack.header.storage.backup.VolumeBackupStorageRefInventory"
			}
			if b.Mode != nil {
				schema[path+".mode"] = "org.zstack.header.storage.backup.BackupMode"
			}
		}
		schema[path] = inventoryClasses[res]
	}
	return schema
}

// loadEach is a query's load function from a loader of one record.
func loadEach[T any](get func(context.Context, string) (T, error), inv func(T) any) func(context.Context, []string) ([]any, error) {
	return func(ctx context.Context, ids []string) ([]any, error) {
		out := make([]any, 0, len(ids))
		for _, id := range ids {
			r, err := get(ctx, id)
			if err != nil {
				return nil, err
			}
			out = append(out, inv(r))
		}
		return out, nil
	}
}

// selectFields keeps only the named fields of each inventory.
func selectFields(invs []any, fields []string) []any {
	out := make([]any, 0, len(invs))
	for _, inv := range invs {
		b, _ := json.Marshal(inv)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		kept := map[string]any{}
		for _, f := range fields {
			if v, ok := m[f]; ok {
				kept[f] = v
			}
		}
		out = append(out, kept)
	}
	return out
}
