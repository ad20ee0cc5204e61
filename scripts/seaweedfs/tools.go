//go:build tools

// Package seaweedfs pins the SeaweedFS release the multi-node tests run
// (scripts/test builds its weed binary once into the cache). It is its
// own module so that SeaweedFS's dependencies stay out of volback's.
package seaweedfs

import _ "github.com/seaweedfs/seaweedfs/weed"
