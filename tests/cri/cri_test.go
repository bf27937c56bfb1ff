package cri

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

const (
	crictlVersion = "v1.37.0"
	pauseImage    = "registry.weave.test/pause:1"
	busyboxImage  = "registry.weave.test/busybox:1"
)

// crictlPath returns crictl: from PATH, or built once from the cri-tools module into the
// user's cache (about two minutes the first time; later runs reuse it).
func crictlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("crictl"); err == nil {
		return p
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("no cache dir for crictl: %v", err)
	}
	dir := filepath.Join(cache, "weave-test", "crictl-"+crictlVersion)
	p := filepath.Join(dir, "crictl")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	t.Logf("building crictl %s into %s (once)", crictlVersion, dir)
	cmd := exec.Command("go", "install", "sigs.k8s.io/cri-tools/cmd/crictl@"+crictlVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false")
	cmd.Dir = os.TempDir() // outside our module: its go.mod is not involved
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build crictl: %v\n%s", err, out)
	}
	return p
}

// ociArchive builds an OCI image layout tarball holding pause and busybox images, both from
// one layer with Debian's static busybox: nothing is pulled from a registry.
func ociArchive(t *testing.T, path string) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("static busybox (Debian's busybox-static): %v", err)
	}
	// The image has no libc: a dynamically linked busybox (Debian's "busybox") cannot run.
	if ef, err := elf.NewFile(bytes.NewReader(bb)); err != nil || slices.ContainsFunc(ef.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
		t.Fatalf("/bin/busybox is not a static binary (install busybox-static): %v", err)
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"} {
		lw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	lw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))})
	lw.Write(bb)
	for _, applet := range []string{"sh", "sleep", "ip", "ping", "cat"} {
		lw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	lw.Close()

	blobs := map[string][]byte{}
	add := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d, len(b)
	}
	layerDigest, layerSize := add(layer.Bytes())
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Platform    map[string]string `json:"platform,omitempty"`
	}
	var index []desc
	for _, img := range []struct {
		name string
		cmd  []string
	}{{pauseImage, []string{"/bin/busybox", "sleep", "2147483647"}}, {busyboxImage, []string{"/bin/sh"}}} {
		cfg, _ := json.Marshal(map[string]any{
			"architecture": runtime.GOARCH, "os": "linux",
			"config": map[string]any{"Cmd": img.cmd, "Env": []string{"PATH=/bin"}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		})
		cfgDigest, cfgSize := add(cfg)
		man, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
			"config": desc{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cfgDigest, Size: cfgSize},
			"layers": []desc{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: layerDigest, Size: layerSize}},
		})
		manDigest, manSize := add(man)
		index = append(index, desc{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: manDigest, Size: manSize,
			Annotations: map[string]string{"io.containerd.image.name": img.name, "org.opencontainers.image.ref.name": "1"},
			Platform:    map[string]string{"architecture": runtime.GOARCH, "os": "linux"}})
	}
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": index})

	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := tar.NewWriter(f)
	file := func(name string, b []byte) {
		w.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))})
		w.Write(b)
	}
	file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	file("index.json", idx)
	for d, b := range blobs {
		file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), b)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// env is containerd with the CRI plugin in a lab host, next to a weave router there.
type env struct {
	t       *testing.T
	host    *netlab.Host
	dir     string
	sock    string
	crictl  string
	weave   string // router's control socket
	cniLog  string
	podDir  string
	netnses []string
}

func (e *env) run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 2 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s%s", strings.Join(argv, " "), err, out, stderr.Bytes())
	}
	return string(out), nil
}

func (e *env) cri(ctx context.Context, args ...string) (string, error) {
	return e.run(ctx, append([]string{e.crictl, "--runtime-endpoint", "unix://" + e.sock, "--image-endpoint", "unix://" + e.sock, "--timeout", "30s"}, args...)...)
}

func (e *env) mustCRI(ctx context.Context, args ...string) string {
	e.t.Helper()
	out, err := e.cri(ctx, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// newEnv runs a router (launched with peers) and containerd in host h.
func newEnv(t *testing.T, h *netlab.Host, peers ...string) *env {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter")
	for _, p := range []string{"/usr/lib/cni/portmap", "/usr/lib/cni/loopback", "/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s missing: run scripts/install-deps.sh: %v", p, err)
		}
	}
	crictl := crictlPath(t)
	weavectl := testutil.Binary(t, "weavectl")
	plugin := testutil.Binary(t, "weave-cni")

	dir := t.TempDir()
	e := &env{t: t, host: h, dir: dir, sock: filepath.Join(dir, "containerd.sock"), crictl: crictl,
		weave: filepath.Join(dir, "weave.sock"), cniLog: filepath.Join(dir, "cni-calls.log"), podDir: filepath.Join(dir, "pods")}
	os.MkdirAll(e.podDir, 0o755)

	// The router.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ctl := func(args ...string) ([]byte, error) {
		return h.Run(ctx, append([]string{weavectl, "--state-dir", filepath.Join(dir, "state"), "--socket", e.weave}, args...)...)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		h.Run(sctx, weavectl, "--state-dir", filepath.Join(dir, "state"), "--socket", e.weave, "stop")
	})
	if out, err := ctl(append([]string{"launch", "--nickname", "cri" + strconv.Itoa(h.Index+1), "--ipalloc-init", "consensus=2"}, peers...)...); err != nil {
		t.Fatalf("launch router: %v\n%s", err, out)
	}

	// CNI: weave-cni behind a wrapper that records every call, portmap and loopback.
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	os.MkdirAll(bin, 0o755)
	os.MkdirAll(conf, 0o755)
	wrapper := fmt.Sprintf("#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME netns=$CNI_NETNS\" >> %s\nexec %s \"$@\"\n", e.cniLog, plugin)
	os.WriteFile(filepath.Join(bin, "weave-cni"), []byte(wrapper), 0o755)
	for _, p := range []string{"portmap", "loopback"} {
		os.Symlink(filepath.Join("/usr/lib/cni", p), filepath.Join(bin, p))
	}
	conflist := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"weave","plugins":[
  {"type":"weave-cni","socket":%q},
  {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`, e.weave)
	os.WriteFile(filepath.Join(conf, "10-weave.conflist"), []byte(conflist), 0o644)

	e.startContainerd(ctx, bin, conf)
	archive := filepath.Join(dir, "images.tar")
	ociArchive(t, archive)
	if _, err := e.run(ctx, "ctr", "-a", e.sock, "-n", "k8s.io", "images", "import", archive); err != nil {
		t.Fatalf("import images: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "CRI sees the images", func() error {
		out, err := e.cri(ctx, "images", "-q")
		if err != nil || strings.Count(out, "sha256:") < 2 {
			return fmt.Errorf("crictl images: %q %v", out, err)
		}
		return nil
	})
	return e
}

// startContainerd runs containerd, with its CRI plugin using the CNI plugins in bin and
// conf, in the lab host's network namespace; it is stopped (and its shims) on cleanup.
func (e *env) startContainerd(ctx context.Context, bin, conf string) {
	e.t.Helper()
	// containerd with its own everything, cgroupfs, OOM score adjustments restricted.
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.native"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
`, filepath.Join(e.dir, "root"), filepath.Join(e.dir, "state-ctr"), e.sock, filepath.Join(e.dir, "ttrpc.sock"),
		filepath.Join(e.dir, "opt"), pauseImage, bin, conf)
	cfgPath := filepath.Join(e.dir, "containerd.toml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	logf, err := os.Create(filepath.Join(e.dir, "containerd.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	// nsenter changes only the network namespace: runc needs the host's /sys/fs/cgroup,
	// which `ip netns exec` would hide behind a fresh sysfs.
	cmd := exec.Command("nsenter", "--net=/run/netns/"+e.host.Name, "containerd", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	e.t.Cleanup(func() { e.teardown(cmd, done) })

	testutil.Eventually(e.t, 30*time.Second, "containerd answers", func() error {
		_, err := e.run(ctx, "ctr", "-a", e.sock, "version")
		return err
	})
}

// teardown removes every pod (so containerd runs DEL), stops containerd and its shims, and
// unmounts what it left under the temp dir.
func (e *env) teardown(cmd *exec.Cmd, done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := e.cri(ctx, "pods", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			e.cri(ctx, "stopp", id)
			e.cri(ctx, "rmp", "-f", id)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	// Shims daemonize: find ours by the containerd address on their command line.
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, d := range ents {
			b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
			if err == nil && bytes.Contains(b, []byte("containerd-shim")) && bytes.Contains(b, []byte(e.sock)) {
				var pid int
				if _, err := fmt.Sscanf(d.Name(), "%d", &pid); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	e.unmountUnder(e.dir)
	for _, ns := range e.netnses {
		syscall.Unmount(ns, syscall.MNT_DETACH)
		os.Remove(ns)
	}
}

func (e *env) unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mounts = append(mounts, fields[4])
		}
	}
	f.Close()
	for _, m := range slices.Backward(mounts) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

func (e *env) allocations() []api.Allocation {
	e.t.Helper()
	c := client.New(e.weave)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := c.IPAMAllocations(ctx)
	if err != nil {
		e.t.Fatalf("allocations: %v", err)
	}
	return a
}

func (e *env) holds(podID string) bool {
	for _, a := range e.allocations() {
		if a.ID == "cni:weave:"+podID {
			return true
		}
	}
	return false
}

type pod struct {
	id, ctr string
	ip      netip.Addr
	netns   string
}

// runPod starts a pod sandbox and a busybox container in it.
func (e *env) runPod(ctx context.Context, name string) pod {
	e.t.Helper()
	podCfg := filepath.Join(e.podDir, name+"-pod.json")
	os.WriteFile(podCfg, fmt.Appendf(nil, `{"metadata":{"name":%q,"namespace":"default","uid":"uid-%s","attempt":0},
		"log_directory":%q,"linux":{}}`, name, name, filepath.Join(e.podDir, name+"-logs")), 0o644)
	ctrCfg := filepath.Join(e.podDir, name+"-ctr.json")
	os.WriteFile(ctrCfg, fmt.Appendf(nil, `{"metadata":{"name":"box"},"image":{"image":%q},
		"command":["/bin/busybox","sleep","3600"],"log_path":"box.log","linux":{}}`, busyboxImage), 0o644)
	id := e.mustCRI(ctx, "runp", podCfg)
	var insp struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(e.mustCRI(ctx, "inspectp", id)), &insp); err != nil {
		e.t.Fatalf("inspectp: %v", err)
	}
	p := pod{id: id}
	p.ip, _ = netip.ParseAddr(insp.Status.Network.IP)
	for _, n := range insp.Info.RuntimeSpec.Linux.Namespaces {
		if n.Type == "network" {
			p.netns = n.Path
			e.netnses = append(e.netnses, n.Path)
		}
	}
	p.ctr = e.mustCRI(ctx, "create", id, ctrCfg, podCfg)
	e.mustCRI(ctx, "start", p.ctr)
	return p
}

func (e *env) calls() []string {
	b, _ := os.ReadFile(e.cniLog)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// TestCRIPods runs pods through containerd's CRI on two hosts: they get addresses from the routers, reach
// each other and the gateway, and removing them releases the addresses, although
// containerd never calls CHECK and calls DEL twice (the second time without a netns).
func TestCRIPods(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	e := newEnv(t, lab.Hosts[0])
	e2 := newEnv(t, lab.Hosts[1], lab.Hosts[0].Addr.String())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if out := e.mustCRI(ctx, "info"); !strings.Contains(out, `"NetworkReady"`) {
		t.Logf("crictl info: %s", out)
	}
	t0 := time.Now()
	p1 := e.runPod(ctx, "p1")
	t.Logf("first pod (sandbox + container) running in %v", time.Since(t0).Round(time.Millisecond))
	p2 := e.runPod(ctx, "p2")
	for _, p := range []pod{p1, p2} {
		if !netip.MustParsePrefix(api.DefaultIPRange).Contains(p.ip) {
			t.Fatalf("pod %s has address %v, outside the router's range", p.id, p.ip)
		}
		if !e.holds(p.id) {
			t.Fatalf("the router does not hold pod %s's address: %+v", p.id, e.allocations())
		}
	}
	if p1.ip == p2.ip {
		t.Fatalf("both pods got %v", p1.ip)
	}
	out := e.mustCRI(ctx, "exec", "-s", p1.ctr, "/bin/busybox", "ip", "-4", "addr", "show", "eth0")
	if !strings.Contains(out, p1.ip.String()+"/") {
		t.Fatalf("pod's eth0 lacks %v:\n%s", p1.ip, out)
	}
	if out, err := e.cri(ctx, "exec", "-s", p1.ctr, "/bin/busybox", "ping", "-c", "1", "-W", "2", p2.ip.String()); err != nil {
		t.Fatalf("pod to pod: %v\n%s", err, out)
	}
	// A pod on the second host, through its own containerd and router: a unique address, and
	// it reaches the first host's pods over the overlay.
	p3 := e2.runPod(ctx, "p3")
	if p3.ip == p1.ip || p3.ip == p2.ip || !e2.holds(p3.id) {
		t.Fatalf("pod on host 2 got %v (host 1's pods: %v, %v); held: %v", p3.ip, p1.ip, p2.ip, e2.holds(p3.id))
	}
	testutil.Eventually(t, 30*time.Second, "pod on host 2 reaches a pod on host 1", func() error {
		out, err := e2.cri(ctx, "exec", "-s", p3.ctr, "/bin/busybox", "ping", "-c", "1", "-W", "1", p1.ip.String())
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	route := e.mustCRI(ctx, "exec", "-s", p2.ctr, "/bin/busybox", "ip", "route")
	gw := ""
	if f := strings.Fields(route); len(f) > 2 && f[0] == "default" {
		gw = f[2]
	}
	if out, err := e.cri(ctx, "exec", "-s", p2.ctr, "/bin/busybox", "ping", "-c", "1", "-W", "2", gw); gw == "" || err != nil {
		t.Fatalf("pod to gateway %q: %v\n%s\n%s", gw, err, route, out)
	}

	t0 = time.Now()
	e.mustCRI(ctx, "stopp", p1.id)
	e.mustCRI(ctx, "rmp", p1.id)
	t.Logf("pod stopped and removed in %v", time.Since(t0).Round(time.Millisecond))
	if e.holds(p1.id) {
		t.Fatalf("removing the pod left its address allocated: %+v", e.allocations())
	}
	if !e.holds(p2.id) {
		t.Fatal("removing p1 released p2's address")
	}
	var adds, dels, checks, emptyDels int
	for _, c := range e.calls() {
		if !strings.Contains(c, p1.id) {
			continue
		}
		switch f := strings.Fields(c); f[0] {
		case "ADD":
			adds++
		case "DEL":
			dels++
			if strings.HasSuffix(c, "netns=") {
				emptyDels++
			}
		case "CHECK":
			checks++
		}
	}
	t.Logf("CNI calls for p1: %d ADD, %d DEL (%d without netns), %d CHECK\n%s", adds, dels, emptyDels, checks, strings.Join(e.calls(), "\n"))
	if adds != 1 || dels < 1 {
		t.Fatalf("want 1 ADD and at least 1 DEL for p1, got %d and %d", adds, dels)
	}
	// The case this test exists for: the DEL after the sandbox's netns is gone succeeded
	// (rmp would have failed otherwise) and found the address released already.
	if emptyDels < 1 {
		t.Errorf("containerd sent no DEL without netns; the case is not exercised (containerd changed?)")
	}
}
