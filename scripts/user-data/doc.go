// Package userdata holds the cloud user-data template (worker.sh.tftpl) that installs a worker
// at boot: it downloads the bootstrapper pinned by sha256 and runs it. The Terraform modules
// under terraform/modules render it with templatefile(); this package's tests render it the
// same way (HCL templates), lint it with bash -n, and run it against a local HTTP server.
package userdata
