package netdev

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// OpenNetns opens path as a network namespace. A path that is not one (a FIFO, a device, a
// plain file, another kind of namespace) is refused with ErrNotNetns before it is opened
// for real: opening a FIFO for reading blocks until a writer comes, which would hang the
// caller forever. The check is made on the path (statfs, which opens nothing) and again on
// the descriptor (opened non-blocking), so a path swapped in between is caught too.
func OpenNetns(path string) (netns.NsHandle, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return netns.None(), fmt.Errorf("open namespace %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return netns.None(), fmt.Errorf("%s: %w (not on nsfs)", path, ErrNotNetns)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("open namespace %s: %w", path, err)
	}
	if err := checkNetnsFd(fd); err != nil {
		unix.Close(fd)
		return netns.None(), fmt.Errorf("%s: %w", path, err)
	}
	return netns.NsHandle(fd), nil
}

func checkNetnsFd(fd int) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("fstatfs: %w", err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%w (not on nsfs)", ErrNotNetns)
	}
	t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if errors.Is(err, unix.ENOTTY) {
		return nil // kernel before 4.11: no type query, the nsfs check alone decides
	}
	if err != nil {
		return fmt.Errorf("query namespace type: %w", err)
	}
	if t != unix.CLONE_NEWNET {
		return fmt.Errorf("%w (a namespace of type %#x)", ErrNotNetns, t)
	}
	return nil
}

// CheckNetns reports whether path is a network namespace, without side effects.
func CheckNetns(path string) error {
	ns, err := OpenNetns(path)
	if err != nil {
		return err
	}
	return ns.Close()
}
