package storage_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/internal/digest"
)

func TestTieredBlobStoreFillsItsLocalTierAndStaysBounded(t *testing.T) {
	b := newS3Backend(t, backendConfig{timeout: 500 * time.Millisecond})
	writer, _ := b.tier(t, 1<<20, time.Minute, 0)
	var blobs [][]byte
	var ds []digest.Digest
	for i := 0; i < 4; i++ {
		data, d := randomBlob(t, 300<<10)
		mustPut(t, writer, data)
		blobs, ds = append(blobs, data), append(ds, d)
	}
	big, dbig := randomBlob(t, 2<<20) // Larger than the local tier.
	mustPut(t, writer, big)

	reader, local := b.tier(t, 1<<20, time.Minute, 0)
	for i, d := range ds {
		if got := readAll(t, reader, d, 0, 0); !bytes.Equal(got, blobs[i]) {
			t.Fatalf("blob %d reads back wrong", i)
		}
	}
	if got := readAll(t, reader, dbig, 1<<20, 100); !bytes.Equal(got, big[1<<20:1<<20+100]) {
		t.Fatal("ranged read of a blob larger than the local tier is wrong")
	}
	n, size := local.Usage()
	if size > 1<<20 || n != 3 {
		t.Fatalf("local tier holds %d blobs, %d bytes; want the 3 most recent within 1 MiB", n, size)
	}
	// The most recently read blobs are served from the local tier with the object store away.
	b.server.Pause()
	defer b.server.Resume()
	for i := 1; i < 4; i++ {
		if got := readAll(t, reader, ds[i], 100, 50); !bytes.Equal(got, blobs[i][100:150]) {
			t.Fatalf("blob %d from the local tier is wrong", i)
		}
	}
}

// TestTieredBlobStoreConcurrentReadsOfAColdBlob reads one blob the local tier lacks from many
// goroutines at once: every reader gets the right bytes.
func TestTieredBlobStoreConcurrentReadsOfAColdBlob(t *testing.T) {
	b := newGCSBackend(t, backendConfig{timeout: 10 * time.Second})
	writer, _ := b.tier(t, 4<<20, time.Minute, 0)
	data, d := randomBlob(t, 1<<20)
	mustPut(t, writer, data)
	reader, local := b.tier(t, 4<<20, time.Minute, 0)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := reader.Get(context.Background(), d, int64(i), 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, data[i:]) {
				t.Errorf("reader %d: %d bytes, %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	if n, size := local.Usage(); n != 1 || size != d.Size {
		t.Fatalf("local tier holds %d blobs, %d bytes; want the one blob", n, size)
	}
}
