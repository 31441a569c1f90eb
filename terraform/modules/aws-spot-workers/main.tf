# Spot workers on an EC2 Auto Scaling group. Each instance runs the user-data template from
# scripts/user-data, which installs the worker with the bootstrapper and starts it under systemd.
# The worker watches IMDS for spot interruption, rebalance and scale-in notices, drains, and
# completes the termination lifecycle hook itself.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  lifecycle_hook_name = "${var.name}-drain"
  token_file          = "/etc/buildfleet/token"

  # After "--" come the worker's own flags: it completes this group's termination hook once
  # drained, so a scaled-in instance goes as soon as its results are acknowledged.
  bootstrap_args = concat(
    ["--packages=${var.packages}", "--drain-timeout=${var.drain_timeout_seconds}s", "--cloud=aws", "--"],
    [
      "--asg-name=${var.name}",
      "--asg-lifecycle-hook=${local.lifecycle_hook_name}",
      "--scale-in-deadline=${var.drain_timeout_seconds + 30}s",
    ],
    var.worker_args,
  )

  # Where the workers come from: a release pinned by its SHA256SUMS, or explicit pinned URLs.
  source_given = (var.release_version != "" ? var.release_sha256sums_sha256 != "" :
  (var.bootstrap_url != "" && var.bootstrap_sha256 != "" && var.worker_url != "" && var.worker_sha256 != ""))
  source_error = "Set release_version and release_sha256sums_sha256, or bootstrap_url, bootstrap_sha256, worker_url and worker_sha256."

  user_data_values = {
    release_url       = var.release_url
    release_version   = var.release_version
    sha256sums_sha256 = var.release_sha256sums_sha256
    bootstrap_url     = var.bootstrap_url
    bootstrap_sha256  = var.bootstrap_sha256
    bootstrap_path    = "/usr/local/sbin/buildfleet-bootstrap"
    worker_url        = var.worker_url
    worker_sha256     = var.worker_sha256
    scheduler         = var.scheduler_address
    token_file        = local.token_file
    token_command = var.auth_token_ssm_parameter == "" ? "" : join(" ", [
      "aws ssm get-parameter --region ${data.aws_region.current.name}",
      "--name ${var.auth_token_ssm_parameter} --with-decryption --query Parameter.Value --output text",
    ])
  }

  # Every value is shell-quoted here, so the template can use it as one word.
  user_data = templatefile("${path.module}/../../../scripts/user-data/worker.sh.tftpl", merge(
    { for k, v in local.user_data_values : k => "'${replace(v, "'", "'\\''")}'" },
    { bootstrap_args = join(" ", [for a in local.bootstrap_args : "'${replace(a, "'", "'\\''")}'"]) },
  ))

  tags = merge({ "app.kubernetes.io/part-of" = "buildfleet", "buildfleet:role" = "worker" }, var.tags)
}

resource "aws_launch_template" "workers" {
  name_prefix            = "${var.name}-"
  image_id               = var.ami_id
  user_data              = base64encode(local.user_data)
  vpc_security_group_ids = var.security_group_ids
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.workers.arn
  }

  lifecycle {
    precondition {
      condition     = local.source_given
      error_message = local.source_error
    }
  }

  # IMDSv2 only; a hop limit of 2 lets containers on the instance read IMDS (spot notices).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "enabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = var.name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "workers" {
  name                = var.name
  min_size            = var.min_size
  max_size            = var.max_size
  vpc_zone_identifier = var.subnet_ids
  capacity_rebalance  = true
  # Scaling policies and schedules own the desired capacity; GroupInServiceInstances feeds the
  # backlog-per-instance metric math.
  enabled_metrics = ["GroupInServiceInstances", "GroupDesiredCapacity", "GroupTerminatingInstances"]

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = var.on_demand_base_capacity
      on_demand_percentage_above_base_capacity = var.on_demand_percentage_above_base_capacity
      spot_allocation_strategy                 = var.spot_allocation_strategy
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.workers.id
        version            = aws_launch_template.workers.latest_version
      }

      dynamic "override" {
        for_each = var.instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }

  # Created with the group, so no instance can start without it: scale-in waits until the
  # worker has drained and completed the action (or the heartbeat timeout passes).
  initial_lifecycle_hook {
    name                 = local.lifecycle_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = var.drain_timeout_seconds + 60
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = var.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}
