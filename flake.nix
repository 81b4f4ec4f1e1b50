{
  description = "rdb: the replicated storage core of FlareDB";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      # rdb-server, rdb-pd and rdb-cli, built from Cargo.lock (RocksDB's C++ is compiled by
      # librocksdb-sys; its bindgen needs libclang).
      packages = forAll (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "rdb";
          version = "0.1.0";
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.pkg-config pkgs.llvmPackages.clang ];
          LIBCLANG_PATH = "${pkgs.llvmPackages.libclang.lib}/lib";
          cargoBuildFlags = [ "--bin" "rdb-server" "--bin" "rdb-pd" "--bin" "rdb-cli" ];
          # The tests start processes and Prometheus; `bash scripts/test.sh` runs them.
          doCheck = false;
          meta.mainProgram = "rdb-cli";
        };
      });

      # The same set-up as scripts/setup.sh: a Rust toolchain, libclang for rocksdb's bindgen,
      # and what the tests run (iproute2, Prometheus, systemd-analyze).
      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.cargo pkgs.rustc pkgs.clippy pkgs.rustfmt pkgs.python3 pkgs.iproute2
            pkgs.prometheus pkgs.systemd
          ];
          LIBCLANG_PATH = "${pkgs.llvmPackages.libclang.lib}/lib";
        };
      });

      # services.rdb: a node of a config-file cluster, a PD-mode store or a PD node, as a
      # systemd service (the units in scripts/systemd/ are the same for other systems).
      nixosModules.default = { config, lib, pkgs, ... }:
        let
          cfg = config.services.rdb;
          pkg = cfg.package;
          exec = {
            node = "${pkg}/bin/rdb-server --config ${cfg.configFile} --node-id ${toString cfg.nodeId}";
            store = "${pkg}/bin/rdb-server --pd ${lib.concatStringsSep "," cfg.pd}"
              + " --addr ${cfg.addr} --peer-addr ${cfg.peerAddr} --data-dir ${cfg.dataDir}"
              + lib.optionalString (cfg.configFile != null) " --config ${cfg.configFile}";
            pd = "${pkg}/bin/rdb-pd --config ${cfg.configFile} --node-id ${toString cfg.nodeId}";
          };
        in {
          options.services.rdb = {
            enable = lib.mkEnableOption "rdb";
            package = lib.mkOption {
              type = lib.types.package;
              default = self.packages.${pkgs.system}.default;
              description = "The rdb package.";
            };
            role = lib.mkOption {
              type = lib.types.enum [ "node" "store" "pd" ];
              default = "node";
              description = "A node of a config-file cluster, a PD-mode store, or a PD node.";
            };
            configFile = lib.mkOption {
              type = lib.types.nullOr lib.types.path;
              default = null;
              description = "The cluster file (node), PD group file (pd) or store file (store).";
            };
            nodeId = lib.mkOption {
              type = lib.types.int;
              default = 1;
              description = "Which node of the file this is (node, pd).";
            };
            pd = lib.mkOption {
              type = lib.types.listOf lib.types.str;
              default = [ ];
              description = "PD's client addresses (store).";
            };
            addr = lib.mkOption {
              type = lib.types.str;
              default = "127.0.0.1:20160";
              description = "Where clients reach the store.";
            };
            peerAddr = lib.mkOption {
              type = lib.types.str;
              default = "127.0.0.1:20170";
              description = "Where other stores reach the store.";
            };
            dataDir = lib.mkOption {
              type = lib.types.str;
              default = "/var/lib/rdb/store";
              description = "The store's data directory.";
            };
          };
          config = lib.mkIf cfg.enable {
            assertions = [{
              assertion = cfg.role == "store" || cfg.configFile != null;
              message = "services.rdb.configFile is needed for a node or a PD node";
            }];
            users.users.rdb = { isSystemUser = true; group = "rdb"; };
            users.groups.rdb = { };
            systemd.services.rdb = {
              description = "rdb ${cfg.role}";
              wantedBy = [ "multi-user.target" ];
              after = [ "network-online.target" ];
              wants = [ "network-online.target" ];
              serviceConfig = {
                ExecStart = exec.${cfg.role};
                User = "rdb";
                Group = "rdb";
                StateDirectory = "rdb";
                KillSignal = "SIGTERM";
                TimeoutStopSec = 10;
                Restart = "on-failure";
                RestartSec = 2;
                LimitNOFILE = 65536;
              };
            };
          };
        };
    };
}
