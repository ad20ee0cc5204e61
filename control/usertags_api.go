package control

import (
	"context"

	"github.com/volback/volback/control/inventory"
)

type userTagInventory struct {
	UUID         string `json:"uuid"`
	ResourceUUID string `json:"resourceUuid"`
	ResourceType string `json:"resourceType"`
	Tag          string `json:"tag"`
	Type         string `json:"type"`
	CreateDate   string `json:"createDate"`
	LastOpDate   string `json:"lastOpDate"`
}

// queryUserTags is QueryUserTag (GET /user-tags[/{uuid}]): the userTags
// given to CreateVolumeBackup, one resource each, as ZStack keeps them.
func (a *API) queryUserTags(ctx context.Context, c *apiCall) (any, error) {
	return a.query(ctx, c, inventory.UserTags, func(ctx context.Context, ids []string) ([]any, error) {
		tags, err := a.DB.GetUserTags(ctx, ids)
		if err != nil {
			return nil, err
		}
		out := make([]any, 0, len(tags))
		for _, t := range tags {
			out = append(out, userTagInventory{UUID: t.UUID, ResourceUUID: t.ResourceUUID, ResourceType: t.ResourceType,
				Tag: t.Tag, Type: "User", CreateDate: gson(t.Created), LastOpDate: gson(t.LastOp)})
		}
		return out, nil
	})
}
