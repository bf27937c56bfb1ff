// Package version reports the build's version: stamped by the Makefile with
// -ldflags "-X github.com/weavemesh/weave/internal/version.stamp=...", else read from the
// module's build information.
package version

import "runtime/debug"

// stamp is set at link time; it is never written at run time.
var stamp string

// String returns the version of this build.
func String() string {
	if stamp != "" {
		return stamp
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}
