# trackpoint on AWS: Fargate tasks in private subnets behind an internet-facing Application Load Balancer, scaled
# on CPU. The infrastructure reads the ports and the drain timeout from the configuration itself, so the two
# cannot disagree.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Application = var.name
    }
  }
}

data "aws_partition" "current" {}

locals {
  config          = yamldecode(var.config_yaml)
  port            = try(local.config.server.port, 8080)
  admin_port      = try(local.config.admin.port, 8081)
  admin_host      = try(local.config.admin.host, "127.0.0.1")
  admin_token_env = try(local.config.admin.token_env, null)
  data_dir        = try(local.config.data_dir, "./trackpoint-data")
  drain_timeout_s = try(local.config.server.drain_timeout_s, 10)
  # Serving on after SIGTERM before the drain (server.shutdown_delay_s): not needed here, ECS deregisters first.
  shutdown_delay_s = try(local.config.server.shutdown_delay_s, 0)
  keepalive_s      = try(local.config.server.limits.keepalive_timeout_s, 30)
  # A log collector that ships its files makes one last pass after the drain, bounded by its
  # ship.shutdown_timeout_s (30 s unless set).
  ship_s = max(0, [
    for collector in values(try(local.config.collectors, {})) :
    try(collector.ship.shutdown_timeout_s, 30) + 1 if try(collector.ship.url, null) != null
  ]...)

  # ECS takes a task out of the target group, waits for deregistration_delay, then sends SIGTERM; the supervisor
  # needs drain_timeout_s plus its own margins (5 s to kill a late worker, 5 s to reap it) before SIGKILL.
  stop_timeout_s = ceil(local.shutdown_delay_s + local.drain_timeout_s + local.ship_s) + 15
  data_path      = "/var/lib/trackpoint"
  config_path    = "${local.data_path}/trackpoint.yaml"
  task_ports     = { tracking = local.port, admin = local.admin_port }

  # The memory (MiB) Fargate accepts for a task of `workers` vCPUs: least, most and step.
  fargate_memory = {
    "1"  = { min = 2048, max = 8192, step = 1024 }
    "2"  = { min = 4096, max = 16384, step = 1024 }
    "4"  = { min = 8192, max = 30720, step = 1024 }
    "8"  = { min = 16384, max = 61440, step = 4096 }
    "16" = { min = 32768, max = 122880, step = 8192 }
  }[tostring(var.workers)]

  log_configuration = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.trackpoint.name
      awslogs-region        = var.region
      awslogs-stream-prefix = var.name
    }
  }
}

resource "aws_cloudwatch_log_group" "trackpoint" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
}

# --- identities ------------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# What ECS itself needs to start a task: pull the image, write logs, read the signing key and the admin token.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "signing_key" {
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.signing_key_secret_arn, var.admin_token_secret_arn]
  }
}

resource "aws_iam_role_policy" "signing_key" {
  name   = "signing-key"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.signing_key.json
}

# The tracker's own identity: no permissions yet. Grant what your collectors use (MSK IAM, S3 for logs) here.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

# --- network ---------------------------------------------------------------------------------------------------

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "trackpoint load balancer: tracking traffic from anywhere"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  security_group_id = aws_security_group.alb.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  count             = var.certificate_arn == null ? 0 : 1
  security_group_id = aws_security_group.alb.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_tasks" {
  for_each                     = local.task_ports
  security_group_id            = aws_security_group.alb.id
  referenced_security_group_id = aws_security_group.tasks.id
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "trackpoint tasks: tracking and admin ports from the load balancer only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "tasks_from_alb" {
  for_each                     = local.task_ports
  security_group_id            = aws_security_group.tasks.id
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
}

# Collectors reach their queues, Redis and object storage; ECS pulls the image and reads the secret.
resource "aws_vpc_security_group_egress_rule" "tasks_out" {
  security_group_id = aws_security_group.tasks.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

# --- load balancer ---------------------------------------------------------------------------------------------

resource "aws_lb" "trackpoint" {
  name               = var.name
  load_balancer_type = "application"
  internal           = false
  security_groups    = [aws_security_group.alb.id]
  subnets            = var.public_subnet_ids
  # Below the tracker's keep-alive timeout: the balancer closes idle connections first, so no request is sent on
  # a connection the tracker is closing (a 502).
  idle_timeout               = max(1, floor(local.keepalive_s) - 5)
  drop_invalid_header_fields = true
}

resource "aws_lb_target_group" "trackpoint" {
  name                 = var.name
  port                 = local.port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 15

  # /startupz, not /readyz: ECS replaces a task its target group finds unhealthy, so this check is the task's
  # liveness as well as its routing. /readyz fails while a `required` collector's target is down or the log's disk
  # is full: every task would be replaced at once, with the unshipped logs and spools of its ephemeral volume.
  # /startupz passes once every worker serves the tracking port (not before: /healthz did, so a new task took
  # requests while its workers were still starting) and fails while one crash-loops, as /healthz does. A draining
  # task has been deregistered before its SIGTERM.
  health_check {
    path                = "/startupz"
    port                = tostring(local.admin_port)
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.trackpoint.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.trackpoint.arn
  }
}

resource "aws_lb_listener" "https" {
  count             = var.certificate_arn == null ? 0 : 1
  load_balancer_arn = aws_lb.trackpoint.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.trackpoint.arn
  }
}

# --- service ---------------------------------------------------------------------------------------------------

resource "aws_ecs_cluster" "trackpoint" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_task_definition" "trackpoint" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.workers * 1024
  memory                   = var.memory_mib
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "data"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      # ECS has no config maps: this short-lived container writes the configuration into the task's volume, hands
      # that volume to the tracker's uid and makes /tmp world-writable (a fresh Fargate bind mount is root's, 0755).
      name       = "config"
      image      = var.image
      essential  = false
      user       = "0"
      entryPoint = ["python", "-c", "import os, pathlib; d = pathlib.Path('${local.data_path}'); (d / 'trackpoint.yaml').write_text(os.environ['TRACKPOINT_CONFIG_YAML']); os.chown(d, 10001, 10001); os.chmod('/tmp', 0o1777)"]
      environment = [
        { name = "TRACKPOINT_CONFIG_YAML", value = var.config_yaml },
      ]
      mountPoints = [
        { sourceVolume = "data", containerPath = local.data_path },
        { sourceVolume = "tmp", containerPath = "/tmp" },
      ]
      readonlyRootFilesystem = true
      logConfiguration       = local.log_configuration
    },
    {
      name      = "trackpoint"
      image     = var.image
      essential = true
      command   = ["--workers", tostring(var.workers)]
      environment = [
        { name = "TRACKPOINT_CONFIG", value = local.config_path },
      ]
      secrets = [
        { name = "TRACKPOINT_SIGNING_KEY", valueFrom = var.signing_key_secret_arn },
        { name = "TRACKPOINT_ADMIN_TOKEN", valueFrom = var.admin_token_secret_arn },
      ]
      portMappings = [for port in values(local.task_ports) : { containerPort = port, protocol = "tcp" }]
      mountPoints = [
        { sourceVolume = "data", containerPath = local.data_path },
        { sourceVolume = "tmp", containerPath = "/tmp" },
      ]
      readonlyRootFilesystem = true
      stopTimeout            = local.stop_timeout_s
      dependsOn              = [{ containerName = "config", condition = "SUCCESS" }]
      logConfiguration       = local.log_configuration
    },
  ])

  lifecycle {
    precondition {
      condition     = var.memory_mib >= local.fargate_memory.min && var.memory_mib <= local.fargate_memory.max && var.memory_mib % local.fargate_memory.step == 0
      error_message = "memory_mib: a Fargate task of ${var.workers} vCPU takes ${local.fargate_memory.min} to ${local.fargate_memory.max} MiB in steps of ${local.fargate_memory.step}."
    }
    precondition {
      condition     = local.admin_host == "0.0.0.0"
      error_message = "config_yaml: admin.host must be 0.0.0.0, or the load balancer cannot reach /startupz."
    }
    precondition {
      condition     = local.admin_token_env == "TRACKPOINT_ADMIN_TOKEN"
      error_message = "config_yaml: admin.token_env must be TRACKPOINT_ADMIN_TOKEN (admin_token_secret_arn); a tracker refuses a public admin port without a token."
    }
    precondition {
      condition     = local.data_dir == local.data_path
      error_message = "config_yaml: data_dir must be /var/lib/trackpoint, the task's volume."
    }
    precondition {
      condition     = local.stop_timeout_s <= 120
      error_message = "config_yaml: server.shutdown_delay_s and drain_timeout_s (with the last shipping pass) must take at most 105 s; ECS kills a task 120 s after SIGTERM at the latest."
    }
  }
}

resource "aws_ecs_service" "trackpoint" {
  name                               = var.name
  cluster                            = aws_ecs_cluster.trackpoint.id
  task_definition                    = aws_ecs_task_definition.trackpoint.arn
  desired_count                      = var.min_tasks
  launch_type                        = "FARGATE"
  health_check_grace_period_seconds  = 30
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.trackpoint.arn
    container_name   = "trackpoint"
    container_port   = local.port
  }

  # The autoscaler owns the count after creation.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.http]
}

resource "aws_appautoscaling_target" "trackpoint" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.trackpoint.name}/${aws_ecs_service.trackpoint.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_tasks
  max_capacity       = var.max_tasks
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.trackpoint.service_namespace
  resource_id        = aws_appautoscaling_target.trackpoint.resource_id
  scalable_dimension = aws_appautoscaling_target.trackpoint.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_out_cooldown = 30
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
