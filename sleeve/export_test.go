package sleeve

import "github.com/weavemesh/weave/overlay"

// HookReceiverForTest makes s deliver to recv instead of its receiver and returns the undo.
// Tests only: the receiver is otherwise fixed by Start.
func HookReceiverForTest(s *Sleeve, recv overlay.Receiver) func() {
	old := s.recv.Swap(&recvBox{recv})
	return func() { s.recv.Store(old) }
}
