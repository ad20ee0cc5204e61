// Command guestinit is the init of the test guest (a QEMU guest booted
// with this program alone as its initramfs): it writes numbered,
// checksummed 4 KiB blocks in order to its disk with O_DIRECT, each made
// durable with fdatasync before the next, and says on the serial console
// which it acknowledged. A crash-consistent image of that disk therefore
// holds blocks 0..k-1 and nothing after, with k at least every block
// acknowledged before the image was taken.
//
// Console lines: "ready", "ack N" (every 16 blocks and at the end),
// "error ..." (an I/O error: the test fails), "done N" (the disk is full;
// it then idles).
//
// When the guest has a second serial port (/dev/ttyS1), a minimal guest
// agent answers on it as qemu-ga does over a serial channel: guest-sync,
// guest-ping, guest-fsfreeze-freeze (the writer stops between two blocks,
// every acknowledged block durable; the console says "frozen N", N blocks
// written), guest-fsfreeze-thaw and guest-fsfreeze-status.
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const (
	blockSize = 4096
	magic     = 0x766f6c6261636b21 // "volback!"
)

func main() {
	_ = os.MkdirAll("/dev", 0o755)
	_ = syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	con, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY, 0)
	if err != nil {
		halt()
	}
	say := func(format string, args ...any) { fmt.Fprintf(con, format+"\n", args...) }
	var disk *os.File
	for i := 0; i < 100; i++ {
		if disk, err = os.OpenFile("/dev/nvme0n1", os.O_RDWR|syscall.O_DIRECT, 0); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		say("error open: %v", err)
		halt()
	}
	size, err := disk.Seek(0, 2)
	if err != nil {
		say("error size: %v", err)
		halt()
	}
	blocks := size / blockSize
	buf := aligned(blockSize)
	var n int64
	var gate sync.RWMutex // the writer holds it shared per block; a freeze holds it
	go agent(&gate, &n, say)
	say("ready %d", blocks)
	for n < blocks {
		gate.RLock()
		fill(buf, uint64(n))
		if _, err := disk.WriteAt(buf, n*blockSize); err != nil {
			say("error write %d: %v", n, err)
			halt()
		}
		if err := syscall.Fdatasync(int(disk.Fd())); err != nil {
			say("error fdatasync %d: %v", n, err)
			halt()
		}
		if n%16 == 15 {
			say("ack %d", n)
		}
		n++ // under the gate: a freeze sees whole blocks only
		gate.RUnlock()
	}
	say("ack %d", n-1)
	say("done %d", n)
	for {
		time.Sleep(time.Hour) // the test powers the guest off
	}
}

// fill makes block seq: magic, seq, a payload derived from seq, and a
// CRC of all that at the end.
func fill(b []byte, seq uint64) {
	binary.LittleEndian.PutUint64(b[0:], magic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	x := seq*0x9e3779b97f4a7c15 + 1
	for i := 16; i < blockSize-4; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	binary.LittleEndian.PutUint32(b[blockSize-4:], crc32.ChecksumIEEE(b[:blockSize-4]))
}

// aligned returns n bytes aligned for O_DIRECT.
func aligned(n int) []byte {
	b := make([]byte, n+blockSize)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (blockSize - 1))
	if off != 0 {
		off = blockSize - off
	}
	return b[off : off+n]
}

// agent serves guest agent commands on /dev/ttyS1, if there is one.
func agent(gate *sync.RWMutex, written *int64, say func(string, ...any)) {
	tty, err := os.OpenFile("/dev/ttyS1", os.O_RDWR, 0)
	if err != nil {
		return
	}
	raw(tty)
	frozen := false
	dec := json.NewDecoder(tty)
	enc := json.NewEncoder(tty)
	for {
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
		}
		if err := dec.Decode(&req); err != nil {
			// Garbage (a client's resync byte, line noise): start afresh.
			dec = json.NewDecoder(tty)
			continue
		}
		var ret any
		switch req.Execute {
		case "guest-sync", "guest-sync-delimited":
			var a struct{ ID int64 }
			_ = json.Unmarshal(req.Arguments, &a)
			ret = a.ID
		case "guest-ping":
			ret = map[string]any{}
		case "guest-fsfreeze-freeze":
			if !frozen {
				gate.Lock()
				frozen = true
				say("frozen %d", *written)
			}
			ret = 1
		case "guest-fsfreeze-thaw":
			if frozen {
				frozen = false
				gate.Unlock()
				say("thawed")
			}
			ret = 1
		case "guest-fsfreeze-status":
			ret = map[bool]string{true: "frozen", false: "thawed"}[frozen]
		default:
			_ = enc.Encode(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "unknown command " + req.Execute}})
			continue
		}
		_ = enc.Encode(map[string]any{"return": ret})
	}
}

// raw puts a serial port in raw mode: no echo, no line editing, no
// translation.
func raw(f *os.File) {
	var t syscall.Termios
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCGETS, uintptr(unsafe.Pointer(&t))); e != 0 {
		return
	}
	t.Iflag &^= syscall.IGNBRK | syscall.BRKINT | syscall.PARMRK | syscall.ISTRIP | syscall.INLCR | syscall.IGNCR | syscall.ICRNL | syscall.IXON
	t.Oflag &^= syscall.OPOST
	t.Lflag &^= syscall.ECHO | syscall.ECHONL | syscall.ICANON | syscall.ISIG | syscall.IEXTEN
	t.Cflag &^= syscall.CSIZE | syscall.PARENB
	t.Cflag |= syscall.CS8
	t.Cc[syscall.VMIN], t.Cc[syscall.VTIME] = 1, 0
	_, _, _ = syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCSETS, uintptr(unsafe.Pointer(&t)))
}

func halt() {
	syscall.Sync()
	for {
		_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}
