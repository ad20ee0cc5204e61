package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzClient feeds arbitrary server bytes to the client's negotiation and
// to the replies of a read: it must end (error or data) without panicking,
// hanging or reading outside the caller's buffer.
func FuzzClient(f *testing.F) {
	hello := binary.BigEndian.AppendUint64(nil, initPasswd)
	hello = binary.BigEndian.AppendUint64(hello, optMagic)
	hello = binary.BigEndian.AppendUint16(hello, flagFixedNewstyle|flagNoZeroes)
	rep := func(opt, typ uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, optReplyMagic)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, 1<<20)
	info = binary.BigEndian.AppendUint16(info, 1)
	good := append(append(append([]byte{}, hello...), rep(optGo, repInfo, info)...), rep(optGo, repAck, nil)...)
	f.Add(good)
	f.Add(append(append([]byte{}, good...), AppendSimpleReply(nil, 0, 1)...))
	f.Add(append(append([]byte{}, good...), AppendStructuredReply(nil, ReplyFlagDone, ReplyTypeOffsetData, 1, 16)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer a.Close()
		go func() {
			// Drain what the client sends; answer with the fuzz input. A
			// pipe's write returns once the client read it all (or the
			// client's end closed), so the close comes after.
			go io.Copy(io.Discard, b)
			b.Write(in)
			b.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := NewClient(ctx, a, "x", ClientOptions{Structured: true})
		if err != nil {
			return
		}
		buf := make([]byte, 16)
		_ = c.ReadAt(ctx, buf, 0)
		c.Close()
	})
}
