// Package testutil holds helpers shared by tests: root checks that fail loudly instead of
// skipping, polling with a deadline, and paths to the built binaries.
package testutil
