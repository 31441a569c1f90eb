variable "name" {
  description = "Name of the Auto Scaling group, launch template, IAM role and lifecycle hook (prefix of the instances' Name tag)."
  type        = string
  default     = "buildfleet-workers"
}

variable "subnet_ids" {
  description = "Subnets the workers are launched in; several availability zones give spot more pools to draw from."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the workers. They need egress to the scheduler (gRPC) and to the artifact and package mirrors; no ingress."
  type        = list(string)
}

variable "ami_id" {
  description = "AMI of the workers: any systemd Linux with curl and sha256sum (Amazon Linux 2023, Debian 12, Ubuntu 22.04+). token_command's tools must be on it too (Amazon Linux ships the AWS CLI)."
  type        = string
}

variable "instance_types" {
  description = "Instance types the mixed instances policy may launch; list several of similar size so spot can pick the deepest pools."
  type        = list(string)
  default     = ["c7i.2xlarge", "c6i.2xlarge", "c6a.2xlarge", "c7a.2xlarge", "m7i.2xlarge", "m6i.2xlarge"]
  validation {
    condition     = length(var.instance_types) >= 1
    error_message = "instance_types needs at least one instance type."
  }
}

variable "on_demand_base_capacity" {
  description = "Instances always bought on demand before any spot capacity (a floor that survives spot shortages)."
  type        = number
  default     = 0
}

variable "on_demand_percentage_above_base_capacity" {
  description = "Percentage of the instances above the base that are on demand; 0 makes them all spot."
  type        = number
  default     = 0
}

variable "spot_allocation_strategy" {
  description = "How spot capacity is chosen; price-capacity-optimized balances price against interruption risk."
  type        = string
  default     = "price-capacity-optimized"
}

variable "min_size" {
  description = "Fewest workers the group keeps."
  type        = number
  default     = 0
}

variable "max_size" {
  description = "Most workers the group may run."
  type        = number
  default     = 64
}

variable "root_volume_size_gb" {
  description = "Size of each worker's gp3 root volume, which holds the file cache and the append-only caches."
  type        = number
  default     = 100
}

variable "release_version" {
  description = "buildfleet release the workers install, e.g. \"v0.1.0\": the user-data fetches RELEASE_URL/VERSION/SHA256SUMS, checks it against release_sha256sums_sha256, and installs the bootstrapper and the worker of the instance's architecture listed in it. Empty: use bootstrap_url and worker_url with their sha256 instead."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^([A-Za-z0-9][A-Za-z0-9._+-]*)?$", var.release_version))
    error_message = "release_version must be a plain version such as v0.1.0."
  }
}

variable "release_sha256sums_sha256" {
  description = "sha256 of the release's SHA256SUMS file (64 hex digits): one pin for every file and architecture of the release. Required with release_version."
  type        = string
  default     = ""
  validation {
    condition     = var.release_sha256sums_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.release_sha256sums_sha256))
    error_message = "release_sha256sums_sha256 must be 64 lowercase hex digits."
  }
}

variable "release_url" {
  description = "https:// base URL of buildfleet releases (fetched with curl by the user-data, so https only; no ?query, #fragment or trailing /); release VERSION's files are under RELEASE_URL/VERSION/ (GitHub's layout; a mirror keeps it)."
  type        = string
  default     = "https://github.com/buildfleet/buildfleet/releases/download"
  validation {
    condition     = can(regex("^https://[^/?#[:space:]]+(/[^?#[:space:]]*[^/?#[:space:]])?$", var.release_url))
    error_message = "release_url must be an https:// URL without a query (?), fragment (#) or trailing /; the release's files are appended to its path after a /."
  }
}

variable "bootstrap_url" {
  description = "https:// URL of the bootstrap binary downloaded by the user-data (without release_version)."
  type        = string
  default     = ""
}

variable "bootstrap_sha256" {
  description = "sha256 of the bootstrap binary (64 hex digits); the user-data refuses any other file."
  type        = string
  default     = ""
  validation {
    condition     = var.bootstrap_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.bootstrap_sha256))
    error_message = "bootstrap_sha256 must be 64 lowercase hex digits."
  }
}

variable "worker_url" {
  description = "https://, s3:// or gs:// URL of the worker binary, fetched by the bootstrapper (without release_version)."
  type        = string
  default     = ""
}

variable "worker_sha256" {
  description = "sha256 of the worker binary (64 hex digits)."
  type        = string
  default     = ""
  validation {
    condition     = var.worker_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.worker_sha256))
    error_message = "worker_sha256 must be 64 lowercase hex digits."
  }
}

variable "worker_artifact_bucket_arns" {
  description = "S3 buckets the instances may read the worker binary from (for s3:// worker URLs); empty grants nothing."
  type        = list(string)
  default     = []
}

variable "scheduler_address" {
  description = "The scheduler as the workers reach it: grpc://HOST:PORT or grpcs://HOST:PORT."
  type        = string
}

variable "auth_token_ssm_parameter" {
  description = "Name of the SSM SecureString parameter holding the workers' scheduler token; empty when the scheduler needs none."
  type        = string
  default     = ""
}

variable "auth_token_kms_key_arn" {
  description = "Customer-managed KMS key encrypting the token parameter, if any; the role may decrypt with it."
  type        = string
  default     = ""
}

variable "drain_timeout_seconds" {
  description = "The worker's --drain-timeout. Spot gives two minutes of notice, so keep it under 120; the lifecycle hook waits longer."
  type        = number
  default     = 100
}

variable "packages" {
  description = "OS packages the bootstrapper installs for actions: \"default\" (python3, bash, coreutils, archivers…), \"none\", or a comma-separated list that may include \"default\"."
  type        = string
  default     = "default"
}

variable "worker_args" {
  description = "Extra worker flags, e.g. [\"--worker-concurrency=8\", \"--platform\", \"pool=spot\"]."
  type        = list(string)
  default     = []
}

variable "queue_depth_scaling" {
  description = "Target tracking on the scheduler's queue depth published to CloudWatch (for example by the CloudWatch agent scraping buildfleet_scheduler_queue_depth): keeps queued actions per in-service worker near target_per_instance. null turns it off."
  type = object({
    namespace           = string
    metric_name         = string
    dimensions          = map(string)
    statistic           = string
    target_per_instance = number
  })
  default = {
    namespace           = "CWAgent"
    metric_name         = "buildfleet_scheduler_queue_depth"
    dimensions          = {}
    statistic           = "Sum"
    target_per_instance = 4
  }
}

variable "scheduled_actions" {
  description = "Scheduled capacity changes (cron recurrence in time_zone), e.g. a working-hours floor; use instead of or with queue_depth_scaling."
  type = list(object({
    name             = string
    recurrence       = string
    min_size         = number
    max_size         = number
    desired_capacity = number
    time_zone        = string
  }))
  default = []
}

variable "tags" {
  description = "Tags added to every resource and propagated to the instances."
  type        = map(string)
  default     = {}
}
