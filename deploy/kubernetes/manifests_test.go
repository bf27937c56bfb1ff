package kubernetes

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// objects decodes every document of the manifests strictly (unknown or duplicate fields
// fail) into its Kubernetes API type.
type objects struct {
	daemonSets   []*appsv1.DaemonSet
	secrets      []*corev1.Secret
	configMaps   []*corev1.ConfigMap
	accounts     []*corev1.ServiceAccount
	clusterRoles []*rbacv1.ClusterRole
	crBindings   []*rbacv1.ClusterRoleBinding
	roles        []*rbacv1.Role
	roleBindings []*rbacv1.RoleBinding
}

func load(t *testing.T) *objects {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	o := &objects{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitDocs(data) {
			if err := o.add(doc); err != nil {
				t.Errorf("%s document %d: %v", f, i+1, err)
			}
		}
	}
	return o
}

func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(data, []byte("\n---\n")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func stripComments(d []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(d, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func decode[T any](doc []byte, dst *[]*T) error {
	v := new(T)
	if err := yaml.UnmarshalStrict(doc, v); err != nil {
		return err
	}
	*dst = append(*dst, v)
	return nil
}

func (o *objects) add(doc []byte) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	switch head.APIVersion + " " + head.Kind {
	case "apps/v1 DaemonSet":
		return decode(doc, &o.daemonSets)
	case "v1 Secret":
		return decode(doc, &o.secrets)
	case "v1 ConfigMap":
		return decode(doc, &o.configMaps)
	case "v1 ServiceAccount":
		return decode(doc, &o.accounts)
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		return decode(doc, &o.clusterRoles)
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		return decode(doc, &o.crBindings)
	case "rbac.authorization.k8s.io/v1 Role":
		return decode(doc, &o.roles)
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		return decode(doc, &o.roleBindings)
	}
	return fmt.Errorf("unexpected object %s %s", head.APIVersion, head.Kind)
}

func TestManifestsDecodeStrictly(t *testing.T) {
	o := load(t)
	if len(o.daemonSets) != 1 || len(o.secrets) != 1 || len(o.accounts) != 1 || len(o.clusterRoles) != 1 ||
		len(o.crBindings) != 1 || len(o.roles) != 1 || len(o.roleBindings) != 1 || len(o.configMaps) != 1 {
		t.Fatalf("want one of each object, got %d daemonsets, %d secrets, %d accounts, %d cluster roles, %d bindings, %d roles, %d role bindings, %d config maps",
			len(o.daemonSets), len(o.secrets), len(o.accounts), len(o.clusterRoles), len(o.crBindings), len(o.roles), len(o.roleBindings), len(o.configMaps))
	}
	// A typo'd field must fail: the strict decoder is really strict.
	bad := []byte("apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      hostNetwrok: true\n")
	if err := (&objects{}).add(bad); err == nil {
		t.Fatal("a misspelt field decoded")
	}
}

func TestDaemonSet(t *testing.T) {
	o := load(t)
	if len(o.daemonSets) != 1 {
		t.Fatal("no DaemonSet")
	}
	ds := o.daemonSets[0]
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("not hostNetwork: the router must own the node's bridge and ports")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priority %q", spec.PriorityClassName)
	}
	for _, effect := range []corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectNoExecute} {
		if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
			return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == effect
		}) {
			t.Errorf("does not tolerate every %s taint", effect)
		}
	}
	if sel := ds.Spec.Selector.MatchLabels; sel == nil || !mapSubset(sel, ds.Spec.Template.Labels) {
		t.Errorf("selector %v does not match template labels %v", sel, ds.Spec.Template.Labels)
	}
	if len(o.accounts) == 0 || spec.ServiceAccountName != o.accounts[0].Name || o.accounts[0].Namespace != ds.Namespace {
		t.Errorf("service account %q is not the one defined", spec.ServiceAccountName)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("router container not privileged")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.Exec == nil ||
		!slices.Equal(c.ReadinessProbe.Exec.Command[:2], []string{"/usr/local/bin/weave-cni", "status"}) {
		t.Errorf("readiness is not the router's status: %+v", c.ReadinessProbe)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	hostPathOf := func(c corev1.Container, mountPath string) string {
		for _, m := range c.VolumeMounts {
			if m.MountPath == mountPath {
				if v, ok := volumes[m.Name]; ok && v.HostPath != nil {
					return v.HostPath.Path
				}
				t.Errorf("mount %s: volume %q is not a host path", mountPath, m.Name)
			}
		}
		return ""
	}
	// State on the host (identity, IPAM survive restarts); socket where the plugin looks.
	if p := hostPathOf(c, "/var/lib/weave"); p != "/var/lib/weave" {
		t.Errorf("state dir not on the host: %q", p)
	}
	if p := hostPathOf(c, "/run/weave"); p != "/run/weave" || !slices.Contains(c.Args, "--socket=/run/weave/weave.sock") {
		t.Errorf("control socket not at the host's /run/weave/weave.sock (where weave-cni looks): %q %v", p, c.Args)
	}
	// Weave's environment, which cmd/weaver reads.
	known := []string{"IPALLOC_RANGE", "IPALLOC_INIT", "WEAVE_PASSWORD", "CONN_LIMIT", "WEAVE_MTU", "WEAVE_NO_FASTDP", "EXTRA_ARGS", "NODE_NAME"}
	for _, e := range c.Env {
		if !slices.Contains(known, e.Name) {
			t.Errorf("env %s is read by nobody", e.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			ref := e.ValueFrom.SecretKeyRef
			if len(o.secrets) == 0 || ref.Name != o.secrets[0].Name || o.secrets[0].StringData[ref.Key] == "" {
				t.Errorf("env %s refers to secret %s/%s, which the Secret manifest lacks", e.Name, ref.Name, ref.Key)
			}
		}
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			ref := e.ValueFrom.ConfigMapKeyRef
			if _, ok := o.configMaps[0].Data[ref.Key]; ref.Name != o.configMaps[0].Name || !ok {
				t.Errorf("env %s refers to config map %s/%s, which is not defined", e.Name, ref.Name, ref.Key)
			}
		}
	}
	// The plugin and its conflist reach the node.
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers", len(spec.InitContainers))
	}
	ic := spec.InitContainers[0]
	if !slices.Equal(ic.Command[:2], []string{"/usr/local/bin/weave-cni", "install"}) {
		t.Errorf("init container does not install the plugin: %v", ic.Command)
	}
	for _, want := range []struct{ flag, host string }{{"--bin-dir=", "/opt/cni/bin"}, {"--conf-dir=", "/etc/cni/net.d"}} {
		i := slices.IndexFunc(ic.Command, func(s string) bool { return strings.HasPrefix(s, want.flag) })
		if i < 0 {
			t.Errorf("init container lacks %s", want.flag)
			continue
		}
		if p := hostPathOf(ic, strings.TrimPrefix(ic.Command[i], want.flag)); p != want.host {
			t.Errorf("%s is not the host's %s: %q", want.flag, want.host, p)
		}
	}
	if ic.Image != c.Image {
		t.Errorf("init image %s differs from router image %s", ic.Image, c.Image)
	}
}

func TestRBAC(t *testing.T) {
	o := load(t)
	sa := o.accounts[0]
	for _, b := range o.crBindings {
		if b.RoleRef.Name != o.clusterRoles[0].Name || b.RoleRef.Kind != "ClusterRole" {
			t.Errorf("cluster role binding refers to %s %s", b.RoleRef.Kind, b.RoleRef.Name)
		}
		if len(b.Subjects) != 1 || b.Subjects[0].Name != sa.Name || b.Subjects[0].Namespace != sa.Namespace {
			t.Errorf("cluster role binding subjects %+v", b.Subjects)
		}
	}
	for _, b := range o.roleBindings {
		if b.RoleRef.Name != o.roles[0].Name || b.RoleRef.Kind != "Role" || b.Namespace != o.roles[0].Namespace {
			t.Errorf("role binding refers to %s %s", b.RoleRef.Kind, b.RoleRef.Name)
		}
		if len(b.Subjects) != 1 || b.Subjects[0].Name != sa.Name {
			t.Errorf("role binding subjects %+v", b.Subjects)
		}
	}
	// Read-only: the router never writes to the API.
	for _, r := range append(o.clusterRoles[0].Rules, o.roles[0].Rules...) {
		for _, v := range r.Verbs {
			if !slices.Contains([]string{"get", "list", "watch"}, v) {
				t.Errorf("rule %+v grants %s", r, v)
			}
		}
	}
}

func mapSubset(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return len(a) > 0
}
