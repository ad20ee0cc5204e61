package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
)

// ImageSpec describes a generated disk image. The image is made of stripes
// of StripeSize bytes whose content cycles through Pattern: 'r' random
// (incompressible, unique), 't' text-like (compresses about 3-4x with zstd,
// unique), 'z' zeros (left as holes). The default pattern "rrtz" gives half
// random, a quarter compressible and a quarter zeros.
type ImageSpec struct {
	Size       int64
	StripeSize int64  // default 16 MiB
	Pattern    string // default "rrtz"
	Seed       uint64
}

func (s ImageSpec) withDefaults() ImageSpec {
	if s.StripeSize == 0 {
		s.StripeSize = 16 << 20
	}
	if s.Pattern == "" {
		s.Pattern = "rrtz"
	}
	return s
}

var words = []string{
	"the ", "volume ", "block ", "backup ", "of ", "and ", "kernel ", "page ",
	"a ", "to ", "write ", "read ", "chunk ", "disk ", "in ", "host ",
	"data ", "is ", "for ", "snapshot ", "guest ", "error ", "log ", "INFO ",
	"2026-11-27 ", "12:30:50 ", "request ", "id=", "ok ", "\n", "\n", "; ",
}

// fillText fills b with word salad drawn from r, with a number now and
// then so no two stripes are alike.
func fillText(r *rand.Rand, b []byte) {
	i := 0
	for i < len(b) {
		v := r.Uint64()
		for j := 0; j < 8 && i < len(b); j++ {
			w := words[(v>>(j*5))&31]
			i += copy(b[i:], w)
		}
		if v>>60 == 0 {
			i += copy(b[i:], fmt.Sprintf("%d ", v&0xffffff))
		}
	}
}

// GenerateImage writes the image spec describes to path, replacing any
// file there. Zero stripes are holes, so the file is sparse.
func GenerateImage(ctx context.Context, path string, spec ImageSpec) error {
	spec = spec.withDefaults()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("generate image: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(spec.Size); err != nil {
		return fmt.Errorf("generate image %s: %w", path, err)
	}
	var seed [32]byte
	for i := range 8 {
		seed[i] = byte(spec.Seed >> (8 * i))
	}
	cc := rand.NewChaCha8(seed)
	tr := rand.New(rand.NewPCG(spec.Seed, 0x5eed))
	buf := make([]byte, min(spec.StripeSize, 4<<20))
	for s := int64(0); s*spec.StripeSize < spec.Size; s++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		kind := spec.Pattern[s%int64(len(spec.Pattern))]
		if kind == 'z' {
			continue
		}
		start := s * spec.StripeSize
		end := min(start+spec.StripeSize, spec.Size)
		for off := start; off < end; off += int64(len(buf)) {
			b := buf[:min(int64(len(buf)), end-off)]
			switch kind {
			case 'r':
				_, _ = cc.Read(b)
			case 't':
				fillText(tr, b)
			default:
				return fmt.Errorf("generate image: unknown pattern letter %q", kind)
			}
			if _, err := f.WriteAt(b, off); err != nil {
				return fmt.Errorf("generate image %s: %w", path, err)
			}
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("generate image %s: %w", path, err)
	}
	return nil
}
