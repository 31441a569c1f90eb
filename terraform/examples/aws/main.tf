# Example: 0–64 spot workers for a scheduler at grpc://scheduler.build.internal:8980, scaled on
# its queue depth (published to CloudWatch by the CloudWatch agent's Prometheus scraping) plus a
# working-hours floor.

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  description = "AWS region of the workers."
  type        = string
  default     = "us-east-1"
}

variable "subnet_ids" {
  description = "Private subnets, one per availability zone."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group allowing the workers egress to the scheduler."
  type        = string
}

variable "release" {
  description = "buildfleet release whose bootstrapper and worker the instances install."
  type        = string
  default     = "v0.1.0"
}

variable "release_sha256sums_sha256" {
  description = "sha256 of the release's SHA256SUMS (from its release notes, or `curl -sL .../SHA256SUMS | sha256sum` on a machine you trust): the one pin for every file and architecture."
  type        = string
}

data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

module "workers" {
  source = "../../modules/aws-spot-workers"

  name               = "buildfleet-workers"
  subnet_ids         = var.subnet_ids
  security_group_ids = [var.security_group_id]
  ami_id             = data.aws_ssm_parameter.al2023.value
  instance_types     = ["c7i.2xlarge", "c6i.2xlarge", "c6a.2xlarge", "m7i.2xlarge"]
  min_size           = 0
  max_size           = 64

  on_demand_base_capacity                  = 1
  on_demand_percentage_above_base_capacity = 0

  release_version           = var.release
  release_sha256sums_sha256 = var.release_sha256sums_sha256

  scheduler_address        = "grpc://scheduler.build.internal:8980"
  auth_token_ssm_parameter = "/buildfleet/worker-token"
  drain_timeout_seconds    = 100
  worker_args              = ["--worker-concurrency=8", "--platform", "OSFamily=linux"]

  queue_depth_scaling = {
    namespace           = "CWAgent"
    metric_name         = "buildfleet_scheduler_queue_depth"
    dimensions          = {}
    statistic           = "Sum"
    target_per_instance = 4
  }

  scheduled_actions = [
    {
      name             = "working-hours-floor"
      recurrence       = "0 8 * * MON-FRI"
      min_size         = 4
      max_size         = 64
      desired_capacity = 4
      time_zone        = "Europe/Berlin"
    },
    {
      name             = "nights-and-weekends"
      recurrence       = "0 20 * * MON-FRI"
      min_size         = 0
      max_size         = 64
      desired_capacity = 0
      time_zone        = "Europe/Berlin"
    },
  ]

  tags = { team = "build-infra" }
}

output "autoscaling_group_name" {
  description = "The workers' Auto Scaling group."
  value       = module.workers.autoscaling_group_name
}

output "worker_role_arn" {
  description = "The workers' instance role."
  value       = module.workers.iam_role_arn
}

# The scheduler's cache in S3 (run the scheduler with --object-store set to the output below);
# the policy goes on the scheduler's role.
variable "scheduler_role_name" {
  description = "IAM role of the scheduler's instances (or its pod identity)."
  type        = string
}

module "cache" {
  source = "../../modules/aws-cache-bucket"

  bucket_name         = "example-buildfleet-cache"
  prefix              = "buildfleet"
  expiration_days     = 30
  scheduler_role_name = var.scheduler_role_name
  tags                = { team = "build-infra" }
}

output "object_store_url" {
  description = "The scheduler's --object-store."
  value       = module.cache.object_store_url
}
