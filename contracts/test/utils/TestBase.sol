// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";

/// @notice The forge cheatcodes these tests use (a subset of forge-std's `Vm`; forge-std is
/// not installed, and nothing may be downloaded).
interface Vm {
    function prank(address sender) external;
    function expectRevert(bytes calldata revertData) external;
    function expectRevert(bytes4 revertData) external;
    function assume(bool condition) external pure;
}

/// @notice Minimal test base: the cheatcode handle, assertions and a sorted-pair Merkle tree
/// (the OpenZeppelin `MerkleProof` semantics; any tree shape with sorted pairs verifies).
abstract contract TestBase {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    error AssertionFailed(string what);

    function assertTrue(bool condition, string memory what) internal pure {
        if (!condition) revert AssertionFailed(what);
    }

    function assertEq(uint256 a, uint256 b, string memory what) internal pure {
        if (a != b) revert AssertionFailed(what);
    }

    function assertEq(bytes32 a, bytes32 b, string memory what) internal pure {
        if (a != b) revert AssertionFailed(what);
    }

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + (x % (hi - lo + 1));
    }

    /// @dev Root of a layered sorted-pair tree over `leaves` (an odd node is carried up).
    function merkleRoot(bytes32[] memory leaves) internal pure returns (bytes32) {
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            level = _up(level);
        }
        return level[0];
    }

    /// @dev Proof of `leaves[index]` in the tree of {merkleRoot}.
    function merkleProof(bytes32[] memory leaves, uint256 index) internal pure returns (bytes32[] memory proof) {
        bytes32[] memory buffer = new bytes32[](64);
        uint256 depth = 0;
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            uint256 sibling = index ^ 1;
            if (sibling < level.length) buffer[depth++] = level[sibling];
            level = _up(level);
            index /= 2;
        }
        proof = new bytes32[](depth);
        for (uint256 i = 0; i < depth; i++) {
            proof[i] = buffer[i];
        }
    }

    function _up(bytes32[] memory level) private pure returns (bytes32[] memory next) {
        next = new bytes32[]((level.length + 1) / 2);
        for (uint256 i = 0; i < next.length; i++) {
            next[i] = 2 * i + 1 < level.length
                ? Hashes.commutativeKeccak256(level[2 * i], level[2 * i + 1])
                : level[2 * i];
        }
    }

    /// @dev The claim leaf of {RewardPool}.
    function leafOf(
        bytes32 runId,
        uint64 round,
        address account,
        bytes32 commitment,
        uint256 score,
        uint256 examples,
        uint256 epsilonMicro,
        uint256 amount
    ) internal pure returns (bytes32) {
        return keccak256(
            bytes.concat(keccak256(abi.encode(runId, round, account, commitment, score, examples, epsilonMicro, amount)))
        );
    }
}
