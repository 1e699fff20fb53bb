// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title AttestationLedger
/// @notice Write-once ledger of per-round Merkle roots of a federated-learning run.
/// @dev Each leaf of a round's tree attests one client's contribution (commitment, score,
/// examples, privacy budget, reward amount); see {RewardPool-claim} for the leaf encoding.
/// Only the root is stored (one storage slot per round) so that the coordinator's cost is flat
/// whatever the number of clients; the aggregate-model hash is bound by the {RoundPosted} event.
/// The contract holds no ETH and makes no external calls.
contract AttestationLedger is AccessControl {
    /// @notice Role allowed to post round roots.
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");

    /// @dev Merkle root of each (run, round); zero means not posted.
    mapping(bytes32 runId => mapping(uint64 round => bytes32 merkleRoot)) private _roots;

    /// @notice A round's root was recorded.
    /// @param runId Identifier of the federated run.
    /// @param round Round number within the run.
    /// @param merkleRoot Root of the round's contribution tree.
    /// @param aggregateHash Hash of the round's aggregated model.
    /// @param coordinator Account that posted the round.
    event RoundPosted(
        bytes32 indexed runId, uint64 indexed round, bytes32 merkleRoot, bytes32 aggregateHash, address coordinator
    );

    /// @notice The (run, round) already has a root; roots are write-once.
    /// @param runId Identifier of the federated run.
    /// @param round Round number within the run.
    error RoundAlreadyPosted(bytes32 runId, uint64 round);

    /// @notice A zero Merkle root was submitted (zero marks "not posted").
    error EmptyRoot();

    /// @notice Set up the roles.
    /// @param admin Account granted DEFAULT_ADMIN_ROLE (manages coordinators); address(0) leaves
    /// the roles fixed forever.
    /// @param coordinator Account granted COORDINATOR_ROLE.
    constructor(address admin, address coordinator) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
    }

    /// @notice Record the Merkle root of a round (once per run and round).
    /// @param runId Identifier of the federated run.
    /// @param round Round number within the run.
    /// @param merkleRoot Root of the round's contribution tree; must be non-zero.
    /// @param aggregateHash Hash of the round's aggregated model (emitted, not stored).
    function postRound(bytes32 runId, uint64 round, bytes32 merkleRoot, bytes32 aggregateHash)
        external
        onlyRole(COORDINATOR_ROLE)
    {
        if (merkleRoot == bytes32(0)) revert EmptyRoot();
        mapping(uint64 => bytes32) storage runRoots = _roots[runId];
        if (runRoots[round] != bytes32(0)) revert RoundAlreadyPosted(runId, round);
        runRoots[round] = merkleRoot;
        emit RoundPosted(runId, round, merkleRoot, aggregateHash, msg.sender);
    }

    /// @notice The Merkle root posted for a round.
    /// @param runId Identifier of the federated run.
    /// @param round Round number within the run.
    /// @return The root, or zero if the round has not been posted.
    function rootOf(bytes32 runId, uint64 round) external view returns (bytes32) {
        return _roots[runId][round];
    }
}
