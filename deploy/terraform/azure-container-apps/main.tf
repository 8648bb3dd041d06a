# trackpoint on Azure Container Apps: one app with external HTTP ingress, scaled on CPU. The configuration is a
# secret mounted as a file; the ports and the drain timeout are read from it, so the app and the configuration
# cannot disagree.

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

locals {
  config          = yamldecode(var.config_yaml)
  port            = try(local.config.server.port, 8080)
  admin_port      = try(local.config.admin.port, 8081)
  admin_host      = try(local.config.admin.host, "127.0.0.1")
  admin_token_env = try(local.config.admin.token_env, null)
  drain_timeout_s = try(local.config.server.drain_timeout_s, 10)
  # Container Apps has no preStop hook: server.shutdown_delay_s keeps a replica serving, /readyz failing, while the
  # ingress stops sending to it, then it drains (the README recommends 10 s).
  shutdown_delay_s = try(local.config.server.shutdown_delay_s, 0)
  # A log collector that ships its files makes one last pass after the drain, bounded by its
  # ship.shutdown_timeout_s (30 s unless set).
  ship_s = max(0, [
    for collector in values(try(local.config.collectors, {})) :
    try(collector.ship.shutdown_timeout_s, 30) + 1 if try(collector.ship.url, null) != null
  ]...)

  # The supervisor needs drain_timeout_s plus its own margins (5 s to kill a late worker, 5 s to reap it).
  termination_grace_s = ceil(local.shutdown_delay_s + local.drain_timeout_s + local.ship_s) + 15
  # A secret volume holds one file per secret, named after it.
  config_secret = "trackpoint-yaml"
  config_dir    = "/etc/trackpoint"
}

resource "azurerm_resource_group" "trackpoint" {
  name     = var.resource_group_name
  location = var.location
}

resource "azurerm_log_analytics_workspace" "trackpoint" {
  name                = "${var.name}-logs"
  location            = azurerm_resource_group.trackpoint.location
  resource_group_name = azurerm_resource_group.trackpoint.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
}

resource "azurerm_container_app_environment" "trackpoint" {
  name                       = "${var.name}-env"
  location                   = azurerm_resource_group.trackpoint.location
  resource_group_name        = azurerm_resource_group.trackpoint.name
  log_analytics_workspace_id = azurerm_log_analytics_workspace.trackpoint.id
}

# The app reads the signing key and the admin token from Key Vault under its own identity: neither passes
# through Terraform.
resource "azurerm_user_assigned_identity" "trackpoint" {
  name                = var.name
  location            = azurerm_resource_group.trackpoint.location
  resource_group_name = azurerm_resource_group.trackpoint.name
}

resource "azurerm_role_assignment" "signing_key" {
  scope                = var.key_vault_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.trackpoint.principal_id
}

resource "azurerm_container_app" "trackpoint" {
  name                         = var.name
  container_app_environment_id = azurerm_container_app_environment.trackpoint.id
  resource_group_name          = azurerm_resource_group.trackpoint.name
  revision_mode                = "Single"

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.trackpoint.id]
  }

  secret {
    name  = local.config_secret
    value = var.config_yaml
  }

  secret {
    name                = "signing-key"
    key_vault_secret_id = var.signing_key_secret_id
    identity            = azurerm_user_assigned_identity.trackpoint.id
  }

  secret {
    name                = "admin-token"
    key_vault_secret_id = var.admin_token_secret_id
    identity            = azurerm_user_assigned_identity.trackpoint.id
  }

  ingress {
    external_enabled = true
    target_port      = local.port
    transport        = "http"

    traffic_weight {
      latest_revision = true
      percentage      = 100
    }
  }

  template {
    min_replicas                     = var.min_replicas
    max_replicas                     = var.max_replicas
    termination_grace_period_seconds = local.termination_grace_s

    container {
      name   = "trackpoint"
      image  = var.image
      cpu    = var.workers
      memory = "${var.workers * 2}Gi"
      args   = ["--workers", tostring(var.workers)]

      env {
        name  = "TRACKPOINT_CONFIG"
        value = "${local.config_dir}/${local.config_secret}"
      }

      env {
        name        = "TRACKPOINT_SIGNING_KEY"
        secret_name = "signing-key"
      }

      env {
        name        = "TRACKPOINT_ADMIN_TOKEN"
        secret_name = "admin-token"
      }

      volume_mounts {
        name = "config"
        path = local.config_dir
      }

      # 60 s for the workers to serve (/startupz: whatever the collectors' health, so that an outage of a
      # `required` collector's target does not stop new replicas from starting); azurerm 3.x capped
      # failure_count_threshold at 10, so the budget is in the interval.
      startup_probe {
        transport               = "HTTP"
        port                    = local.admin_port
        path                    = "/startupz"
        interval_seconds        = 6
        failure_count_threshold = 10
      }

      liveness_probe {
        transport               = "HTTP"
        port                    = local.admin_port
        path                    = "/healthz"
        interval_seconds        = 10
        timeout                 = 2
        failure_count_threshold = 3
      }

      readiness_probe {
        transport               = "HTTP"
        port                    = local.admin_port
        path                    = "/readyz"
        interval_seconds        = 5
        timeout                 = 2
        failure_count_threshold = 2
        success_count_threshold = 1
      }
    }

    volume {
      name         = "config"
      storage_type = "Secret"
    }

    custom_scale_rule {
      name             = "cpu"
      custom_rule_type = "cpu"
      metadata = {
        type  = "Utilization"
        value = tostring(var.cpu_target_percent)
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.admin_host == "0.0.0.0"
      error_message = "config_yaml: admin.host must be 0.0.0.0, or the probes cannot reach the admin port."
    }
    precondition {
      condition     = local.admin_token_env == "TRACKPOINT_ADMIN_TOKEN"
      error_message = "config_yaml: admin.token_env must be TRACKPOINT_ADMIN_TOKEN (admin_token_secret_id); a tracker refuses a public admin port without a token."
    }
    precondition {
      condition     = local.termination_grace_s <= 600
      error_message = "config_yaml: server.shutdown_delay_s and drain_timeout_s (with the last shipping pass) must take at most 585 s; Container Apps allows a 600 s grace period."
    }
  }

  depends_on = [azurerm_role_assignment.signing_key]
}
