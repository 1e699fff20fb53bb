// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {AttestationLedger} from "./AttestationLedger.sol";

/// @title RewardPool
/// @notice Pays each client its reward for a round against a Merkle proof of its attested leaf.
/// @dev The pool is funded by a plain token transfer. A round's per-client amounts are computed
/// off-chain (budget x score / total score) and are part of the leaves whose root the coordinator
/// posts on the {AttestationLedger}. A leaf is
/// `keccak256(bytes.concat(keccak256(abi.encode(runId, round, account, commitment, score,
/// examples, epsilonMicro, amount))))` (OpenZeppelin StandardMerkleTree encoding) and the tree
/// hashes sorted pairs. The claimant is `msg.sender`, so a leaf can only be claimed by its own
/// account. The pool holds no ETH; its only external calls are a static call to the ledger
/// (before the effects, read-only) and the token transfer (after them).
contract RewardPool {
    using SafeERC20 for IERC20;

    /// @notice Token paid out.
    IERC20 public immutable token;

    /// @notice Ledger holding the rounds' Merkle roots.
    AttestationLedger public immutable ledger;

    /// @dev Claimed leaves.
    mapping(bytes32 leaf => bool) private _claimed;

    /// @notice A reward was paid.
    /// @param runId Identifier of the federated run.
    /// @param round Round number within the run.
    /// @param account Client paid.
    /// @param amount Amount of `token` transferred.
    /// @param score The client's attested score for the round.
    event Claimed(bytes32 indexed runId, uint64 indexed round, address indexed account, uint256 amount, uint256 score);

    /// @notice The round has no root on the ledger.
    error RoundNotPosted();
    /// @notice The proof does not lead from the claimant's leaf to the round's root.
    error InvalidProof();
    /// @notice The leaf was already paid.
    error AlreadyClaimed();

    /// @notice Bind the pool to its token and ledger.
    /// @param token_ Token paid out.
    /// @param ledger_ Ledger holding the rounds' roots.
    constructor(IERC20 token_, AttestationLedger ledger_) {
        token = token_;
        ledger = ledger_;
    }

    /// @notice Claim the caller's reward for a round.
    /// @param runId Identifier of the federated run.
    /// @param round Round number within the run.
    /// @param commitment Commitment to the client's update.
    /// @param score The client's contribution score.
    /// @param examples Number of training examples the client used.
    /// @param epsilonMicro The client's privacy budget spent, in millionths of epsilon.
    /// @param amount Reward for the round, in the token's smallest unit.
    /// @param proof Sibling hashes from the leaf to the root (sorted-pair tree).
    function claim(
        bytes32 runId,
        uint64 round,
        bytes32 commitment,
        uint256 score,
        uint256 examples,
        uint256 epsilonMicro,
        uint256 amount,
        bytes32[] calldata proof
    ) external {
        // Read-only (STATICCALL) lookup in the immutable, trusted ledger.
        bytes32 root = ledger.rootOf(runId, round);
        if (root == bytes32(0)) revert RoundNotPosted();
        bytes32 leaf = _leaf(runId, round, msg.sender, commitment, score, examples, epsilonMicro, amount);
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof();
        if (_claimed[leaf]) revert AlreadyClaimed();
        _claimed[leaf] = true;
        emit Claimed(runId, round, msg.sender, amount, score);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Whether a leaf has been paid.
    /// @param runId Identifier of the federated run.
    /// @param round Round number within the run.
    /// @param account Client the leaf belongs to.
    /// @param commitment Commitment to the client's update.
    /// @param score The client's contribution score.
    /// @param examples Number of training examples the client used.
    /// @param epsilonMicro The client's privacy budget spent, in millionths of epsilon.
    /// @param amount Reward for the round.
    /// @return True if the leaf was claimed.
    function isClaimed(
        bytes32 runId,
        uint64 round,
        address account,
        bytes32 commitment,
        uint256 score,
        uint256 examples,
        uint256 epsilonMicro,
        uint256 amount
    ) external view returns (bool) {
        return _claimed[_leaf(runId, round, account, commitment, score, examples, epsilonMicro, amount)];
    }

    /// @dev The double-hashed leaf of a claim.
    function _leaf(
        bytes32 runId,
        uint64 round,
        address account,
        bytes32 commitment,
        uint256 score,
        uint256 examples,
        uint256 epsilonMicro,
        uint256 amount
    ) private pure returns (bytes32) {
        return keccak256(
            bytes.concat(keccak256(abi.encode(runId, round, account, commitment, score, examples, epsilonMicro, amount)))
        );
    }
}
