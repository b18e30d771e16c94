# The reno edges: nats-servers (nats/edge.conf) that hold the device websockets over TLS, ask reno's
# authorization service about every device (auth callout) and are leaf nodes of the hub. Devices
# connect to wss://<edge>:9443; put the edges behind a TCP load balancer or DNS name on that port.
#
# Run from the repository root, after the hub (the config is read from nats/ when the job is
# submitted):
#
#   nomad job run -var edge_count=2 deploy/nomad/reno-edge.nomad.hcl
#
# Needs on each edge machine: a Nomad client with the exec driver, the system user "nats" (uid and
# gid nats_uid), node meta reno_edge = "true", and a host network named "loopback" (client config:
# host_network "loopback" { cidr = "127.0.0.1/32" }): edge.conf binds the monitoring listener to
# 127.0.0.1, so its /healthz can only be checked from the machine itself. Needs in Nomad variables: the public keys at nomad/jobs and
# the edge's seeds and TLS files at nomad/jobs/reno-edge (docs/operations.md, "Secrets").

variable "edge_count" {
  description = "How many edges; one per machine."
  type        = number
  default     = 2
}

variable "nats_uid" {
  description = "The uid (and gid) of the system user nats the server runs as, owner of its secrets."
  type        = number
  default     = 2222
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "reno-edge" {
  datacenters = var.datacenters
  type        = "service"

  # One edge at a time: its devices reconnect to the others (and catch up by pull) meanwhile.
  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "20s"
    healthy_deadline = "5m"
    auto_revert      = true
  }

  group "edge" {
    count = var.edge_count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    constraint {
      attribute = "${meta.reno_edge}"
      value     = "true"
    }

    network {
      port "ws" {
        static = 9443
      }
      port "monitor" {
        host_network = "loopback"
      }
    }

    service {
      name     = "reno-edge"
      provider = "nomad"
      port     = "ws"
      tags     = ["websocket", "wss"]

      check {
        name     = "healthz"
        type     = "http"
        port     = "monitor"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }

      check {
        name     = "websocket-port"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "nats-server" {
      driver = "exec"
      user   = "nats"

      artifact {
        source      = "https://github.com/nats-io/nats-server/releases/download/v2.14.6/nats-server-v2.14.6-linux-amd64.tar.gz"
        destination = "local/"
        options {
          # The archive's sha256, as the official nats:2.14.6 image build checks it. Bump the
          # version here, in the command and in scripts/nats-server.lock together.
          checksum = "sha256:61c3d55f69f61ec616b75782250936445f2819e9e5f2ae6159b10a31abd2200c"
        }
      }

      # The repository's own config, unchanged.
      template {
        data        = file("nats/edge.conf")
        destination = "local/nats/edge.conf"
        change_mode = "noop"
      }

      # The websocket certificate chain (server certificate, then CA) and its key. nats-server
      # reloads them on SIGHUP, so a renewed certificate needs no restart.
      template {
        data          = "{{ with nomadVar \"nomad/jobs/reno-edge\" }}{{ .tls_chain }}{{ end }}"
        destination   = "secrets/server-chain.pem"
        perms         = "0400"
        uid           = var.nats_uid
        gid           = var.nats_uid
        change_mode   = "signal"
        change_signal = "SIGHUP"
      }

      template {
        data          = "{{ with nomadVar \"nomad/jobs/reno-edge\" }}{{ .tls_key }}{{ end }}"
        destination   = "secrets/server-key.pem"
        perms         = "0400"
        uid           = var.nats_uid
        gid           = var.nats_uid
        change_mode   = "signal"
        change_signal = "SIGHUP"
      }

      # The leaf users' seeds, the callout's public keys, and every hub node's leaf URL. A changed
      # hub list needs no restart: a leaf connection learns the hub cluster's other leaf URLs.
      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/reno-edge" -}}
          RENO_LEAF_DEVICES_SEED={{ .leaf_devices_seed }}
          RENO_LEAF_AUTH_SEED={{ .leaf_auth_seed }}
          {{ end -}}
          {{ with nomadVar "nomad/jobs" -}}
          RENO_PUB_EDGE_ADMIN={{ .pub_edge_admin }}
          RENO_PUB_CALLOUT_ISSUER={{ .pub_callout_issuer }}
          RENO_PUB_CALLOUT_XKEY={{ .pub_callout_xkey }}
          {{ end -}}
          RENO_HUB_LEAF_URLS='[{{ range $index, $hub := nomadService "reno-hub-leaf" }}{{ if $index }},{{ end }}"nats-leaf://{{ .Address }}:{{ .Port }}"{{ end }}]'
        EOT
        destination = "secrets/edge.env"
        env         = true
        change_mode = "noop"
      }

      env {
        RENO_LISTEN_HOST  = "${NOMAD_IP_ws}"
        RENO_EDGE_NAME    = "edge-${node.unique.name}"
        RENO_EDGE_WS_PORT = "${NOMAD_PORT_ws}"
        RENO_TLS_CERT     = "${NOMAD_SECRETS_DIR}/server-chain.pem"
        RENO_TLS_KEY      = "${NOMAD_SECRETS_DIR}/server-key.pem"
      }

      config {
        command = "local/nats-server-v2.14.6-linux-amd64/nats-server"
        # The client port is loopback only and nobody needs it: a free one (-1).
        args = [
          "-c", "local/nats/edge.conf",
          "-p", "-1",
          "-m", "${NOMAD_PORT_monitor}",
        ]
      }

      # nats-server stops on SIGTERM; its devices reconnect to another edge and catch up by pull.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 2000
        memory = 1024
      }
    }
  }
}
