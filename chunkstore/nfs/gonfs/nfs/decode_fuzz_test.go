package nfs

import (
	"bytes"
	"testing"

	"github.com/willscott/go-nfs-client/nfs/xdr"
)

// FuzzResults: the parts every result the client decodes is made of (file
// system info, attributes, handles, directory entries, wcc data, opaques
// and lists) return a value or an error whatever the bytes, and take no
// more than the reply holds.
func FuzzResults(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Add([]byte{0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff})
	// The shapes Target.ReadDirPlus declares for its listing.
	type dirListPlus3 struct {
		IsSet bool      `xdr:"union"`
		Entry EntryPlus `xdr:"unioncase=1"`
	}
	type dirListOK struct {
		DirAttrs   PostOpAttr
		CookieVerf uint64
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []any{new(FSInfo), new(Fattr), new(PostOpAttr), new(PostOpFH3), new(EntryPlus), new(WccData)} {
			_ = xdr.Read(bytes.NewReader(data), v)
		}
		// A directory listing, as Target.ReadDirPlus walks it.
		r := bytes.NewReader(data)
		if xdr.Read(r, new(dirListOK)) == nil {
			for i := 0; i < 1<<16; i++ {
				var item dirListPlus3
				if xdr.Read(r, &item) != nil || !item.IsSet {
					break
				}
			}
		}
		if b, err := xdr.ReadOpaque(bytes.NewReader(data)); err == nil && len(b) > len(data) {
			t.Fatalf("an opaque of %d bytes from %d", len(b), len(data))
		}
		if l, err := xdr.ReadUint32List(bytes.NewReader(data)); err == nil && len(l)*4 > len(data) {
			t.Fatalf("a list of %d values from %d bytes", len(l), len(data))
		}
	})
}
