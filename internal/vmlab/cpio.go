package vmlab

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// newc cpio mode bits.
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

// cpioWriter writes the "newc" (SVR4, no CRC) format the kernel unpacks into its rootfs. The
// kernel needs no more than that, so a few lines here spare a dependency and a staging tree.
type cpioWriter struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, ino: 1, dirs: map[string]bool{"": true, ".": true, "/": true}}
}

func (c *cpioWriter) header(name string, mode uint32, size int, nlink uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	name = strings.TrimPrefix(name, "/")
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	c.pad(len(hdr) + len(name) + 1)
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// mkdirAll writes every missing parent directory of p (and p itself), once.
func (c *cpioWriter) mkdirAll(p string) {
	p = strings.Trim(path.Clean("/"+p), "/")
	if c.dirs[p] {
		return
	}
	c.mkdirAll(path.Dir(p))
	c.header(p, modeDir|0o755, 0, 2)
	c.dirs[p] = true
}

// file writes a regular file, creating its parent directories.
func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.mkdirAll(path.Dir(name))
	c.header(name, modeFile|perm, len(data), 1)
	c.write(data)
	c.pad(len(data))
}

// symlink writes name -> target.
func (c *cpioWriter) symlink(name, target string) {
	c.mkdirAll(path.Dir(name))
	c.header(name, modeSymlink|0o777, len(target), 1)
	c.write([]byte(target))
	c.pad(len(target))
}

// close writes the trailer and reports the first error of any write.
func (c *cpioWriter) close() error {
	c.header("TRAILER!!!", 0, 0, 1)
	return c.err
}
