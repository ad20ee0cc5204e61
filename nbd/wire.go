package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Magic numbers of the transmission phase.
const (
	RequestMagic         = protocol.TRANSMISSION_MAGIC_REQUEST // 0x25609513
	SimpleReplyMagic     = protocol.TRANSMISSION_MAGIC_REPLY   // 0x67446698
	StructuredReplyMagic = uint32(0x668e33ef)
)

// RequestHeaderSize is the size of a request header on the wire.
const RequestHeaderSize = 28

// Command is a request type.
type Command uint16

// Commands of the transmission phase.
const (
	CmdRead        = Command(protocol.TRANSMISSION_TYPE_REQUEST_READ)
	CmdWrite       = Command(protocol.TRANSMISSION_TYPE_REQUEST_WRITE)
	CmdDisc        = Command(protocol.TRANSMISSION_TYPE_REQUEST_DISC)
	CmdFlush       = Command(3)
	CmdTrim        = Command(4)
	CmdCache       = Command(5)
	CmdWriteZeroes = Command(6)
	CmdBlockStatus = Command(7)
	CmdResize      = Command(8)
)

var commandNames = map[Command]string{
	CmdRead: "READ", CmdWrite: "WRITE", CmdDisc: "DISC", CmdFlush: "FLUSH", CmdTrim: "TRIM",
	CmdCache: "CACHE", CmdWriteZeroes: "WRITE_ZEROES", CmdBlockStatus: "BLOCK_STATUS", CmdResize: "RESIZE",
}

func (c Command) String() string {
	if n, ok := commandNames[c]; ok {
		return n
	}
	return fmt.Sprintf("CMD(%d)", uint16(c))
}

// CommandFlags are a request's flags.
type CommandFlags uint16

// Command flags.
const (
	FlagFUA        CommandFlags = 1 << 0
	FlagNoHole     CommandFlags = 1 << 1
	FlagDF         CommandFlags = 1 << 2
	FlagReqOne     CommandFlags = 1 << 3
	FlagFastZero   CommandFlags = 1 << 4
	FlagPayloadLen CommandFlags = 1 << 5
)

// Errno is an error number in a reply. The protocol fixes these values,
// whatever the host's errno numbering.
type Errno uint32

// Error numbers a server may send.
const (
	EPERM     = Errno(protocol.TRANSMISSION_ERROR_EPERM)
	EIO       = Errno(5)
	ENOMEM    = Errno(12)
	EINVAL    = Errno(protocol.TRANSMISSION_ERROR_EINVAL)
	ENOSPC    = Errno(28)
	EOVERFLOW = Errno(75)
	ENOTSUP   = Errno(95)
	ESHUTDOWN = Errno(108)
)

var errnoNames = map[Errno]string{
	EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
	EOVERFLOW: "EOVERFLOW", ENOTSUP: "ENOTSUP", ESHUTDOWN: "ESHUTDOWN",
}

func (e Errno) Error() string {
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return fmt.Sprintf("errno %d", uint32(e))
}

// Request is a parsed request header.
type Request struct {
	Flags  CommandFlags
	Type   Command
	Cookie uint64
	Offset uint64
	Length uint32
}

func (r Request) String() string {
	return fmt.Sprintf("%s cookie=%#x offset=%d length=%d flags=%#x", r.Type, r.Cookie, r.Offset, r.Length, uint16(r.Flags))
}

// ErrBadMagic is returned for a request header without the request magic:
// the stream is out of step and the connection cannot continue.
var ErrBadMagic = errors.New("nbd: bad request magic")

// ParseRequest parses a request header. Only a wrong magic is an error.
func ParseRequest(b *[RequestHeaderSize]byte) (Request, error) {
	if m := binary.BigEndian.Uint32(b[0:4]); m != RequestMagic {
		return Request{}, fmt.Errorf("%w %#08x", ErrBadMagic, m)
	}
	return Request{
		Flags:  CommandFlags(binary.BigEndian.Uint16(b[4:6])),
		Type:   Command(binary.BigEndian.Uint16(b[6:8])),
		Cookie: binary.BigEndian.Uint64(b[8:16]),
		Offset: binary.BigEndian.Uint64(b[16:24]),
		Length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// AppendRequest appends r's wire form to dst (for clients and tests).
func AppendRequest(dst []byte, r Request) []byte {
	dst = binary.BigEndian.AppendUint32(dst, RequestMagic)
	dst = binary.BigEndian.AppendUint16(dst, uint16(r.Flags))
	dst = binary.BigEndian.AppendUint16(dst, uint16(r.Type))
	dst = binary.BigEndian.AppendUint64(dst, r.Cookie)
	dst = binary.BigEndian.AppendUint64(dst, r.Offset)
	return binary.BigEndian.AppendUint32(dst, r.Length)
}

// AppendSimpleReply appends a simple reply header.
func AppendSimpleReply(dst []byte, errno Errno, cookie uint64) []byte {
	dst = binary.BigEndian.AppendUint32(dst, SimpleReplyMagic)
	dst = binary.BigEndian.AppendUint32(dst, uint32(errno))
	return binary.BigEndian.AppendUint64(dst, cookie)
}

// Structured reply chunk types and flags.
const (
	ReplyFlagDone         uint16 = 1 << 0
	ReplyTypeNone         uint16 = 0
	ReplyTypeOffsetData   uint16 = 1
	ReplyTypeOffsetHole   uint16 = 2
	ReplyTypeBlockStatus  uint16 = 5
	ReplyTypeError        uint16 = 1<<15 + 1
	ReplyTypeErrorOffset  uint16 = 1<<15 + 2
	structuredHeaderBytes        = 20
)

// AppendStructuredReply appends a structured reply chunk header announcing
// length bytes of payload.
func AppendStructuredReply(dst []byte, flags, typ uint16, cookie uint64, length uint32) []byte {
	dst = binary.BigEndian.AppendUint32(dst, StructuredReplyMagic)
	dst = binary.BigEndian.AppendUint16(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, typ)
	dst = binary.BigEndian.AppendUint64(dst, cookie)
	return binary.BigEndian.AppendUint32(dst, length)
}
