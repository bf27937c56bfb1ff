// Package vm holds the tests that need Debian's kernel (ESP, GCM, netem, ...), which the test
// machine's kernel lacks. Each test starts with vmlab.Require: under `go test` on the host it
// boots a QEMU VM (internal/vmlab) that runs that one test and reports the guest's verdict;
// inside the VM the same test body runs against real namespaces built with internal/netlab.
//
// TCG emulation is several times slower than the host: these tests check correctness, never
// speed, and stay few and short.
package vm
