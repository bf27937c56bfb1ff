package vmlab

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// baseModuleDirs are the module trees (relative to lib/modules/RELEASE/kernel) every VM gets,
// so that netlab, iptables-nft and the daemon find what they ask the kernel to autoload
// (veth, bridge, tun, VXLAN, nf_tables and xtables matches, XFRM, qdiscs, crypto).
var baseModuleDirs = []string{
	"net/netfilter", "net/ipv4", "net/ipv6", "net/bridge", "net/sched", "net/xfrm", "net/key",
	"net/core", "net/802", "net/llc", "net/8021q", "net/openvswitch", "net/nsh",
	"crypto", "lib", "arch/x86/crypto",
	"drivers/net/vxlan", "drivers/net/veth.ko", "drivers/net/tun.ko", "drivers/net/geneve.ko",
	"drivers/net/dummy.ko", "drivers/net/wireguard", "drivers/net/macvlan.ko", "drivers/net/ifb.ko",
}

// eagerModules are loaded by the guest's init before anything else: busybox modprobe ignores
// softdep, so crc32c_generic must be there before libcrc32c users (openvswitch, conntrack);
// /dev/net/tun appears in devtmpfs only once tun is loaded, and the daemon opens that node.
var eagerModules = []string{"crc32c_generic", "tun"}

// moduleIndex maps a module name ("sch_netem"; '-' and '_' are the same) to its path relative
// to the module directory and its dependencies' paths, from modules.dep.
type moduleIndex struct {
	byName map[string]string
	deps   map[string][]string
}

func modName(p string) string {
	b := filepath.Base(p)
	b = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(b, ".xz"), ".zst"), ".ko")
	return strings.ReplaceAll(b, "-", "_")
}

func readModuleIndex(modDir string) (*moduleIndex, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("module index: %w", err)
	}
	defer f.Close()
	idx := &moduleIndex{byName: map[string]string{}, deps: map[string][]string{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		idx.byName[modName(mod)] = mod
		idx.deps[mod] = strings.Fields(deps)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("module index: %w", err)
	}
	return idx, nil
}

// closure returns the paths of the named modules, of every module under the given
// directories, and of all their dependencies. A name the kernel does not have as a module is
// an error (a built-in one would be too, but asking for it is a mistake of the test).
func (idx *moduleIndex) closure(names, dirs []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	var add func(p string)
	add = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, d := range idx.deps[p] {
			add(d)
		}
		out = append(out, p)
	}
	for _, n := range names {
		p, ok := idx.byName[strings.ReplaceAll(n, "-", "_")]
		if !ok {
			return nil, fmt.Errorf("kernel has no module %q", n)
		}
		add(p)
	}
	for _, d := range dirs {
		prefix := "kernel/" + d
		for p := range idx.deps {
			if p == prefix || strings.HasPrefix(p, prefix+"/") || strings.HasPrefix(p, prefix+".") {
				add(p)
			}
		}
	}
	return out, nil
}
