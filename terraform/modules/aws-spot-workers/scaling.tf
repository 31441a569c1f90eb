# Scaling: target tracking on queued actions per in-service worker, and/or schedules.

resource "aws_autoscaling_policy" "queue_depth" {
  count                     = var.queue_depth_scaling == null ? 0 : 1
  name                      = "${var.name}-queue-depth"
  autoscaling_group_name    = aws_autoscaling_group.workers.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = 120

  target_tracking_configuration {
    target_value = var.queue_depth_scaling.target_per_instance

    customized_metric_specification {
      metrics {
        id          = "queue"
        label       = "Actions queued at the scheduler"
        return_data = false
        metric_stat {
          stat = var.queue_depth_scaling.statistic
          metric {
            namespace   = var.queue_depth_scaling.namespace
            metric_name = var.queue_depth_scaling.metric_name
            dynamic "dimensions" {
              for_each = var.queue_depth_scaling.dimensions
              content {
                name  = dimensions.key
                value = dimensions.value
              }
            }
          }
        }
      }

      metrics {
        id          = "workers"
        label       = "In-service workers"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "AWS/AutoScaling"
            metric_name = "GroupInServiceInstances"
            dimensions {
              name  = "AutoScalingGroupName"
              value = aws_autoscaling_group.workers.name
            }
          }
        }
      }

      # With no worker in service the whole queue counts as one worker's backlog, so the group
      # scales out from zero.
      metrics {
        id          = "backlog_per_worker"
        label       = "Queued actions per in-service worker"
        expression  = "queue / IF(workers > 0, workers, 1)"
        return_data = true
      }
    }
  }
}

resource "aws_autoscaling_schedule" "scheduled" {
  for_each               = { for s in var.scheduled_actions : s.name => s }
  scheduled_action_name  = each.value.name
  autoscaling_group_name = aws_autoscaling_group.workers.name
  recurrence             = each.value.recurrence
  time_zone              = each.value.time_zone
  min_size               = each.value.min_size
  max_size               = each.value.max_size
  desired_capacity       = each.value.desired_capacity
}
