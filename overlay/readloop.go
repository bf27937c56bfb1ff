package overlay

import (
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/weavemesh/weave/internal/logx"
)

// ReadFailed is what a batched read loop (the switch's TAP reader, the sleeve's socket
// reader) does with a read error: it reports whether the loop must end (the device was
// closed, or closed is); otherwise it logs the error and backs off briefly, since a
// persistent error must not spin a core.
func ReadFailed(err error, closed <-chan struct{}, log *slog.Logger, msg string) (stop bool) {
	if errors.Is(err, net.ErrClosed) {
		return true
	}
	select {
	case <-closed:
		return true
	default:
	}
	log.Warn(msg, logx.KeyErr, err)
	time.Sleep(10 * time.Millisecond)
	return false
}
