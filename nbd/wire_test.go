package nbd

import (
	"errors"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	want := Request{Flags: FlagFUA | FlagNoHole, Type: CmdWriteZeroes, Cookie: 0xdeadbeefcafe, Offset: 1 << 40, Length: 65536}
	var b [RequestHeaderSize]byte
	copy(b[:], AppendRequest(nil, want))
	got, err := ParseRequest(&b)
	if err != nil || got != want {
		t.Fatalf("ParseRequest(AppendRequest(%v)) = %v, %v", want, got, err)
	}
	b[0] ^= 1
	if _, err := ParseRequest(&b); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("bad magic: got %v, want ErrBadMagic", err)
	}
}

func TestUnknownCommandParses(t *testing.T) {
	var b [RequestHeaderSize]byte
	copy(b[:], AppendRequest(nil, Request{Type: 99, Flags: 1 << 15}))
	r, err := ParseRequest(&b)
	if err != nil || r.Type != 99 || r.Type.String() != "CMD(99)" {
		t.Fatalf("unknown command: %v %v", r, err)
	}
}

func TestReplyHeaders(t *testing.T) {
	if got := AppendSimpleReply(nil, EINVAL, 7); len(got) != 16 || got[7] != 22 || got[15] != 7 {
		t.Fatalf("simple reply: % x", got)
	}
	if got := AppendStructuredReply(nil, ReplyFlagDone, ReplyTypeError, 7, 6); len(got) != structuredHeaderBytes || got[5] != 1 || got[6] != 0x80 || got[19] != 6 {
		t.Fatalf("structured reply: % x", got)
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add(AppendRequest(nil, Request{Type: CmdRead, Length: 4096}))
	f.Add(make([]byte, RequestHeaderSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < RequestHeaderSize {
			return
		}
		var b [RequestHeaderSize]byte
		copy(b[:], in)
		r, err := ParseRequest(&b)
		if err != nil {
			return
		}
		if string(AppendRequest(nil, r)) != string(b[:]) {
			t.Fatalf("re-encoding %v differs from its input", r)
		}
	})
}
