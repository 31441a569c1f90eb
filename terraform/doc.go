// Package terraform holds the Terraform modules that run buildfleet workers on spot capacity
// (modules/aws-spot-workers, modules/gcp-spot-workers), the buckets that hold the scheduler's
// cache (modules/aws-cache-bucket, modules/gcp-cache-bucket), and examples using them.
// Terraform does not run in CI; this package's tests check the HCL with
// github.com/hashicorp/hcl/v2: every file parses, every variable, local, resource and module
// used is declared, variables and outputs are documented, and the modules keep the settings
// spot workers and the cache buckets depend on.
package terraform
