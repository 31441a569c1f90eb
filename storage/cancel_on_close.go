package storage

import (
	"context"
	"io"
	"sync"
)

// cancelOnClose closes a reader and then cancels the context it was opened with.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
	once   sync.Once
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.once.Do(c.cancel)
	return err
}
