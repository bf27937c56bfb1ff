package kubernetes

import (
	"path"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/weavemesh/weave/internal/image"
)

// Every container of the DaemonSet runs the image `make image` writes, without pulling it
// when the node has it, and each command (and probe) is a binary that image holds.
func TestImageMatchesMakeImage(t *testing.T) {
	o := load(t)
	spec := o.daemonSets[0].Spec.Template.Spec
	inImage := slices.Concat(image.Binaries, image.OptionalBinaries)
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		if c.Image != image.DefaultName {
			t.Errorf("container %s: image %s, `make image` writes %s", c.Name, c.Image, image.DefaultName)
		}
		if c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("container %s: imagePullPolicy %q, want IfNotPresent (the image is imported, not pulled)", c.Name, c.ImagePullPolicy)
		}
		cmds := [][]string{c.Command}
		if c.ReadinessProbe != nil && c.ReadinessProbe.Exec != nil {
			cmds = append(cmds, c.ReadinessProbe.Exec.Command)
		}
		for _, cmd := range cmds {
			if len(cmd) == 0 || path.Dir(cmd[0]) != "/"+image.BinDir || !slices.Contains(inImage, path.Base(cmd[0])) {
				t.Errorf("container %s runs %v, not one of the image's /%s/%v", c.Name, cmd, image.BinDir, inImage)
			}
		}
	}
}
