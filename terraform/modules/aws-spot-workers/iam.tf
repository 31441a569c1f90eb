# The workers' instance role: complete and extend this group's lifecycle actions only, find
# their own group, read the token and (optionally) the worker binary.

locals {
  asg_arn = join(":", [
    "arn", data.aws_partition.current.partition, "autoscaling", data.aws_region.current.name,
    data.aws_caller_identity.current.account_id, "autoScalingGroup", "*", "autoScalingGroupName/${var.name}",
  ])
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "workers" {
  name               = var.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_instance_profile" "workers" {
  name = var.name
  role = aws_iam_role.workers.name
  tags = local.tags
}

data "aws_iam_policy_document" "workers" {
  statement {
    sid       = "CompleteOwnLifecycleActions"
    actions   = ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"]
    resources = [local.asg_arn]
  }

  # These two calls support no resource-level permissions.
  statement {
    sid       = "FindOwnGroup"
    actions   = ["autoscaling:DescribeAutoScalingInstances", "ec2:DescribeTags"]
    resources = ["*"]
  }

  dynamic "statement" {
    for_each = var.auth_token_ssm_parameter == "" ? [] : [1]
    content {
      sid     = "ReadToken"
      actions = ["ssm:GetParameter"]
      resources = [
        "arn:${data.aws_partition.current.partition}:ssm:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(var.auth_token_ssm_parameter, "/")}",
      ]
    }
  }

  dynamic "statement" {
    for_each = var.auth_token_kms_key_arn == "" ? [] : [1]
    content {
      sid       = "DecryptToken"
      actions   = ["kms:Decrypt"]
      resources = [var.auth_token_kms_key_arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.worker_artifact_bucket_arns) == 0 ? [] : [1]
    content {
      sid       = "ReadWorkerBinary"
      actions   = ["s3:GetObject"]
      resources = [for arn in var.worker_artifact_bucket_arns : "${arn}/*"]
    }
  }
}

resource "aws_iam_role_policy" "workers" {
  name   = "${var.name}-worker"
  role   = aws_iam_role.workers.id
  policy = data.aws_iam_policy_document.workers.json
}
