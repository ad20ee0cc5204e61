package rpc

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/willscott/go-nfs-client/nfs/xdr"
)

// record frames words as one RPC record marked last.
func record(words ...uint32) []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.BigEndian, uint32(len(words)*4)|0x80000000)
	for _, w := range words {
		_ = binary.Write(&b, binary.BigEndian, w)
	}
	return b.Bytes()
}

// FuzzReply: whatever a server sends as a reply, the record reader and the
// reply parser return (a value or an error), never panic, and never
// allocate beyond the record limit.
func FuzzReply(f *testing.F) {
	f.Add(record(7, 1, MsgAccepted, 0, 0, Success, 42))                // a success with one result word
	f.Add(record(7, 1, MsgAccepted, 0, 8, 1, 2, GarbageArgs))          // verifier of 8 bytes, garbage args
	f.Add(record(7, 1, MsgDenied, RpcMismatch, 2, 2))                  // rejected
	f.Add(record(7, 1, MsgAccepted, 0, 0xffffffff))                    // a verifier longer than the reply
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1})                  // a huge first fragment
	f.Add(append(record(7, 1)[:4:4], record(MsgAccepted, 0, 0, 0)...)) // two fragments
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := readRecord(bytes.NewReader(data))
		if err != nil {
			return
		}
		if rec.Len() > maxRecord {
			t.Fatalf("a record of %d bytes", rec.Len())
		}
		if _, err := xdr.ReadUint32(rec); err != nil {
			return
		}
		res, err := parseReply(rec)
		if err == nil && res == nil {
			t.Fatal("no results and no error")
		}
	})
}

// TestReplyErrors: the replies a broken server sends are errors naming
// what is wrong.
func TestReplyErrors(t *testing.T) {
	for name, data := range map[string][]byte{
		"truncated verifier": record(7, 1, MsgAccepted, 0, 64),
		"not a reply":        record(7, 0),
		"rpc mismatch":       record(7, 1, MsgDenied, RpcMismatch),
		"garbage args":       record(7, 1, MsgAccepted, 0, 0, GarbageArgs),
	} {
		rec, err := readRecord(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, _ = xdr.ReadUint32(rec)
		if _, err := parseReply(rec); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	huge := []byte{0x7f, 0xff, 0xff, 0xff}
	if _, err := readRecord(bytes.NewReader(huge)); err == nil {
		t.Error("a 2 GiB record was accepted")
	}
}
