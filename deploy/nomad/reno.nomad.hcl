# reno's long-running processes, all from the reno image (Dockerfile at the repository root): a
# worker group per priority (each scaled on its own), the pull service with the presence tracker,
# the authorization service the edges' auth callout asks, and the HTTP gateway. Every process reads
# the same reno.toml (rendered below) and signs in to the hub with a seed from Nomad variables.
#
#   nomad job run -var reno_image=registry.example.com/reno:0.1.0 deploy/nomad/reno.nomad.hcl
#
# Run it after the hub; dispatch deploy/nomad/reno-provision.nomad.hcl once too (the order does
# not matter: workers and services wait, not ready, until the streams exist). Needs in Nomad
# variables: nomad/jobs/reno (the reno user's seed, the device-token JWKS), nomad/jobs/reno/auth
# (the authorization service's seeds), nomad/jobs/reno/gateway (the service tokens); see
# docs/operations.md, "Secrets".
#
# Health: each process serves /livez and /readyz on its admin listener (worker.admin_addr,
# pull.admin_addr, auth.admin_addr, gateway.admin_addr below), which is also where Prometheus
# scrapes /metrics (services tagged "metrics").

variable "reno_image" {
  description = "The reno image, built from the Dockerfile at the repository root."
  type        = string
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

locals {
  # The configuration of every process here (docs/configuration.md). Each process reads the
  # sections it needs; admin listeners bind inside the container and are mapped by Nomad. Every
  # task renders its own hub seed to secrets/nats.nk: the reno user's, except the authorization
  # service's, which is its own (it needs nothing in the RENO account).
  reno_toml = <<-EOT
    [nats]
    url = "{{ range $index, $hub := nomadService "reno-hub" }}{{ if $index }},{{ end }}nats://{{ .Address }}:{{ .Port }}{{ end }}"
    nkey_seed_file = "{{ env "NOMAD_SECRETS_DIR" }}/nats.nk"

    [auth]
    token_keys_file = "{{ env "NOMAD_SECRETS_DIR" }}/device-token-keys.jwks"
    nkey_seed_file = "{{ env "NOMAD_SECRETS_DIR" }}/nats.nk"
    issuer_seed_file = "{{ env "NOMAD_SECRETS_DIR" }}/callout_issuer.nk"
    xkey_seed_file = "{{ env "NOMAD_SECRETS_DIR" }}/callout_xkey.xk"
    admin_addr = "0.0.0.0:9466"

    [registry]
    path = "/app/registry/events.toml"

    [streams]
    # As in reno-provision.nomad.hcl (set any other streams key in both): `reno registry`, run
    # in any of these allocations, writes the registry bucket with these replicas, and the
    # presence tracker reads presence_ttl_secs.
    replicas = 3

    [worker]
    # Keep below the tasks' kill_timeout (30 s).
    grace_secs = 20
    admin_addr = "0.0.0.0:9464"

    [pull]
    admin_addr = "0.0.0.0:9465"

    [gateway]
    listen_addr = "0.0.0.0:8080"
    service_tokens_file = "{{ env "NOMAD_SECRETS_DIR" }}/service-tokens"
    web_dir = "/app/web/device/dist"
    admin_addr = "0.0.0.0:9467"

    [log]
    level = "info,async_nats=warn"
    format = "json"
  EOT

  # The reno user's seed, for every process except the authorization service.
  reno_seed = "{{ with nomadVar \"nomad/jobs/reno\" }}{{ .reno_seed }}{{ end }}"
}

job "reno" {
  datacenters = var.datacenters
  type        = "service"

  # One allocation of a group at a time; a worker drains its in-flight events before it stops.
  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  # ---- Workers: one group per priority, each with its own count, resources and scaling. ----

  group "worker-high" {
    count = 2

    network {
      port "admin" {
        to = 9464
      }
    }

    scaling {
      enabled = true
      min     = 2
      max     = 12

      # For the Nomad Autoscaler: keep the 99th percentile of publish-to-ack time near 250 ms.
      policy {
        cooldown            = "2m"
        evaluation_interval = "30s"

        check "latency" {
          source = "prometheus"
          query  = "histogram_quantile(0.99, sum(rate(reno_worker_event_seconds_bucket{priority=\"high\"}[2m])) by (le))"

          strategy "target-value" {
            target = 0.25
          }
        }
      }
    }

    task "worker" {
      driver = "docker"

      service {
        name     = "reno-worker-high"
        provider = "nomad"
        port     = "admin"
        tags     = ["metrics", "priority-high"]

        check {
          name     = "livez"
          type     = "http"
          path     = "/livez"
          interval = "10s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }

        check {
          name     = "readyz"
          type     = "http"
          path     = "/readyz"
          interval = "10s"
          timeout  = "3s"
        }
      }

      config {
        image   = var.reno_image
        command = "reno"
        args    = ["worker", "--priority", "high"]
        ports   = ["admin"]
      }

      template {
        data        = local.reno_toml
        destination = "local/reno.toml"
        change_mode = "noop"
      }

      template {
        data        = local.reno_seed
        destination = "secrets/nats.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      env {
        RENO_CONFIG              = "${NOMAD_TASK_DIR}/reno.toml"
        RENO_WORKER_HIGH_THREADS = "2"
      }

      # SIGTERM: stop fetching, finish in-flight events within worker.grace_secs (20 s), hand
      # unstarted ones back (nak), exit; Nomad kills only after kill_timeout.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 2000
        memory = 512
      }
    }
  }

  group "worker-normal" {
    count = 2

    network {
      port "admin" {
        to = 9464
      }
    }

    scaling {
      enabled = true
      min     = 1
      max     = 8

      policy {
        cooldown            = "2m"
        evaluation_interval = "30s"

        check "latency" {
          source = "prometheus"
          query  = "histogram_quantile(0.99, sum(rate(reno_worker_event_seconds_bucket{priority=\"normal\"}[2m])) by (le))"

          strategy "target-value" {
            target = 1
          }
        }
      }
    }

    task "worker" {
      driver = "docker"

      service {
        name     = "reno-worker-normal"
        provider = "nomad"
        port     = "admin"
        tags     = ["metrics", "priority-normal"]

        check {
          name     = "livez"
          type     = "http"
          path     = "/livez"
          interval = "10s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }

        check {
          name     = "readyz"
          type     = "http"
          path     = "/readyz"
          interval = "10s"
          timeout  = "3s"
        }
      }

      config {
        image   = var.reno_image
        command = "reno"
        args    = ["worker", "--priority", "normal"]
        ports   = ["admin"]
      }

      template {
        data        = local.reno_toml
        destination = "local/reno.toml"
        change_mode = "noop"
      }

      template {
        data        = local.reno_seed
        destination = "secrets/nats.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      env {
        RENO_CONFIG                = "${NOMAD_TASK_DIR}/reno.toml"
        RENO_WORKER_NORMAL_THREADS = "1"
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 1000
        memory = 512
      }
    }
  }

  group "worker-low" {
    count = 1

    network {
      port "admin" {
        to = 9464
      }
    }

    scaling {
      enabled = true
      min     = 1
      max     = 4

      policy {
        cooldown            = "5m"
        evaluation_interval = "1m"

        check "latency" {
          source = "prometheus"
          query  = "histogram_quantile(0.99, sum(rate(reno_worker_event_seconds_bucket{priority=\"low\"}[5m])) by (le))"

          strategy "target-value" {
            target = 10
          }
        }
      }
    }

    task "worker" {
      driver = "docker"

      service {
        name     = "reno-worker-low"
        provider = "nomad"
        port     = "admin"
        tags     = ["metrics", "priority-low"]

        check {
          name     = "livez"
          type     = "http"
          path     = "/livez"
          interval = "10s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }

        check {
          name     = "readyz"
          type     = "http"
          path     = "/readyz"
          interval = "10s"
          timeout  = "3s"
        }
      }

      config {
        image   = var.reno_image
        command = "reno"
        args    = ["worker", "--priority", "low"]
        ports   = ["admin"]
      }

      template {
        data        = local.reno_toml
        destination = "local/reno.toml"
        change_mode = "noop"
      }

      template {
        data        = local.reno_seed
        destination = "secrets/nats.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      env {
        RENO_CONFIG             = "${NOMAD_TASK_DIR}/reno.toml"
        RENO_WORKER_LOW_THREADS = "1"
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }

  # ---- The services devices talk to: pull and presence. ----

  group "pull" {
    count = 2

    network {
      port "admin" {
        to = 9465
      }
    }

    task "pull-service" {
      driver = "docker"

      service {
        name     = "reno-pull"
        provider = "nomad"
        port     = "admin"
        tags     = ["metrics"]

        check {
          name     = "livez"
          type     = "http"
          path     = "/livez"
          interval = "10s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }

        check {
          name     = "readyz"
          type     = "http"
          path     = "/readyz"
          interval = "10s"
          timeout  = "3s"
        }
      }

      config {
        image   = var.reno_image
        command = "reno"
        args    = ["pull-service"]
        ports   = ["admin"]
      }

      template {
        data        = local.reno_toml
        destination = "local/reno.toml"
        change_mode = "noop"
      }

      template {
        data        = local.reno_seed
        destination = "secrets/nats.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      env {
        RENO_CONFIG = "${NOMAD_TASK_DIR}/reno.toml"
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }

  # ---- The authorization service: answers the edges' auth callout. ----

  group "auth" {
    count = 2

    network {
      port "admin" {
        to = 9466
      }
    }

    task "auth-service" {
      driver = "docker"

      service {
        name     = "reno-auth"
        provider = "nomad"
        port     = "admin"
        tags     = ["metrics"]

        check {
          name     = "livez"
          type     = "http"
          path     = "/livez"
          interval = "10s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }

        check {
          name     = "readyz"
          type     = "http"
          path     = "/readyz"
          interval = "10s"
          timeout  = "3s"
        }
      }

      config {
        image   = var.reno_image
        command = "reno"
        args    = ["auth-service"]
        ports   = ["admin"]
      }

      template {
        data        = local.reno_toml
        destination = "local/reno.toml"
        change_mode = "noop"
      }

      # Its own user in the hub's AUTH account, for the callout and for its readiness connection.
      template {
        data        = "{{ with nomadVar \"nomad/jobs/reno/auth\" }}{{ .authsvc_seed }}{{ end }}"
        destination = "secrets/nats.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/reno/auth\" }}{{ .callout_issuer_seed }}{{ end }}"
        destination = "secrets/callout_issuer.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/reno/auth\" }}{{ .callout_xkey_seed }}{{ end }}"
        destination = "secrets/callout_xkey.xk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      # The operator's public device-token keys. A new key set needs a restart (keys are read at
      # start).
      template {
        data        = "{{ with nomadVar \"nomad/jobs/reno\" }}{{ .device_token_keys }}{{ end }}"
        destination = "secrets/device-token-keys.jwks"
        change_mode = "restart"
        uid         = 10001
        gid         = 10001
      }

      env {
        RENO_CONFIG = "${NOMAD_TASK_DIR}/reno.toml"
        # Devices must connect again with a fresh token at least this often.
        RENO_AUTH_MAX_CONNECTION_SECS = "86400"
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }

  # ---- The HTTP gateway: events from services, pull and presence over HTTP, the browser page. ----

  group "gateway" {
    count = 2

    network {
      port "http" {
        to = 8080
      }
      port "admin" {
        to = 9467
      }
    }

    task "gateway" {
      driver = "docker"

      service {
        name     = "reno-gateway"
        provider = "nomad"
        port     = "http"
        tags     = ["http"]

        check {
          name     = "livez"
          type     = "http"
          port     = "admin"
          path     = "/livez"
          interval = "10s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }

        check {
          name     = "readyz"
          type     = "http"
          port     = "admin"
          path     = "/readyz"
          interval = "10s"
          timeout  = "3s"
        }
      }

      service {
        name     = "reno-gateway-admin"
        provider = "nomad"
        port     = "admin"
        tags     = ["metrics"]
      }

      config {
        image   = var.reno_image
        command = "reno"
        args    = ["gateway"]
        ports   = ["http", "admin"]
      }

      template {
        data        = local.reno_toml
        destination = "local/reno.toml"
        change_mode = "noop"
      }

      template {
        data        = local.reno_seed
        destination = "secrets/nats.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/reno\" }}{{ .device_token_keys }}{{ end }}"
        destination = "secrets/device-token-keys.jwks"
        change_mode = "restart"
        uid         = 10001
        gid         = 10001
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/reno/gateway\" }}{{ .service_tokens }}{{ end }}"
        destination = "secrets/service-tokens"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        change_mode = "restart"
      }

      env {
        RENO_CONFIG = "${NOMAD_TASK_DIR}/reno.toml"
      }

      # Deregistered first, so that load balancers stop sending requests before the stop.
      shutdown_delay = "5s"
      kill_signal    = "SIGTERM"
      kill_timeout   = "30s"

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }
}
